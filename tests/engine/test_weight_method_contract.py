"""The `WeightMethod` and `ActivationMethod` contracts, written once and run over every
registered unit (as Optuna's `testing/pytest_samplers.py` runs one suite over every sampler).

A unit passes when its config round-trips through JSON and refuses bad input naming the field,
its candidates fit the layer they were resolved for, its predicted size is the exported payload,
its proxy error is a relative error that tracks the real one, and apply → export → load and the
deployed form all compute what the applied module computes.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from engine.apply import ApplyConfig, apply_plan_
from engine.deploy import deployed
from engine.export import export, freeze_, load
from engine.layers import PlannedLayer
from predictors.size import size_report
from search_spaces import LayerPlan, Plan, PlanError, discover, validate_plan
from search_spaces.methods import (
    BuildSettings,
    activation_methods,
    register_weight_method,
    registered,
    weight_method,
    weight_methods,
)
from search_spaces.methods.vq import VectorQuantization
from search_spaces.plan import pruned_row_length

QUIET = ApplyConfig(progress=False, kmeans_iterations=8)
WEIGHT_UNITS = [unit.name for unit in weight_methods()]
ACTIVATION_UNITS = [unit.name for unit in activation_methods()]


class _Net(nn.Module):
    """Conv (48 → 32 channels), BN, Linear: every row length is divisible by many m."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 48, 3, padding=1)
        self.body = nn.Conv2d(48, 32, 3, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.head = nn.Linear(32, 16)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.body(torch.relu(self.stem(x))))).mean((2, 3)))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = _Net()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.train()
        model(torch.randn(32, 3, 8, 8))
    return model.eval()


@pytest.fixture(scope="module")
def net_graph(net):
    return discover(net, torch.zeros(1, 3, 8, 8))


def _candidates(unit, graph, name):
    spec = graph.layers[name]
    knobs, why = unit.resolve(unit.knobs_type(), spec, {spec.row_length})
    assert knobs is not None, why
    configs = unit.candidates(knobs)
    assert configs, f"{unit.name} has no candidate for {name}"
    return configs


def _sample(configs, n=3):
    """First, middle and last: the extremes of the knobs and one in between."""
    return list(dict.fromkeys([configs[0], configs[len(configs) // 2], configs[-1]]))[:n]


# -- weight methods -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", WEIGHT_UNITS)
def test_config_json_round_trip(method, net_graph):
    unit = weight_method(method)
    for config in _candidates(unit, net_graph, "body"):
        data = config.to_dict()
        assert data["method"] == method
        settings = {k: v for k, v in data.items() if k != "method"}
        assert unit.config_type.from_dict(settings) == config
        plan = Plan({"body": LayerPlan(weights=config)})
        assert Plan.from_json(plan.to_json()) == plan
        assert isinstance(unit.label(config), str) and unit.label(config)


@pytest.mark.parametrize("method", WEIGHT_UNITS)
def test_config_errors_name_the_field(method, net_graph):
    unit = weight_method(method)
    with pytest.raises(PlanError) as error:
        unit.config_type.from_dict({"no_such_setting": 1})
    assert error.value.field == "no_such_setting"
    with pytest.raises(PlanError) as error:
        LayerPlan.from_dict({"weights": {"method": method, "no_such_setting": 1}}, layer="body")
    assert error.value.field == "weights.no_such_setting" and error.value.layer == "body"


@pytest.mark.parametrize("method", WEIGHT_UNITS)
def test_candidates_fit_the_layer_they_were_resolved_for(method, net_graph):
    unit = weight_method(method)
    for name, spec in net_graph.layers.items():
        knobs, _ = unit.resolve(unit.knobs_type(), spec, {spec.row_length})
        if knobs is None:
            continue
        configs = unit.candidates(knobs)
        assert len(set(configs)) == len(configs)  # distinct
        for config in configs:
            unit.check(config, row_length=spec.row_length, layer=name)
            validate_plan(Plan({name: LayerPlan(weights=config)}), net_graph)
        params = unit.parameters(knobs)
        first = unit.decode({knob: choices[0] for knob, choices in params.items()})
        assert first in configs


@pytest.mark.parametrize("method", WEIGHT_UNITS)
def test_vectorised_size_equals_one_by_one(method, net_graph):
    from predictors.size import PlanBatch, SizePredictor

    unit = weight_method(method)
    plans = [
        Plan({"body": LayerPlan(weights=c), "head": LayerPlan(weights=h)})
        for c, h in zip(
            _candidates(unit, net_graph, "body")[:40],
            _candidates(unit, net_graph, "head")[:40],
            strict=False,
        )
    ]
    batch = SizePredictor(net_graph).predict_bits(PlanBatch.from_plans(net_graph, plans))
    assert batch.tolist() == [size_report(p, net_graph).total_bits for p in plans]
    report = size_report(plans[0], net_graph)
    body = next(layer for layer in report.layers if layer.name == "body")
    assert body.method == method and body.weights == sum(body.parts.values()) > 0


@pytest.mark.parametrize("method", WEIGHT_UNITS)
def test_proxy_error_is_a_relative_error_that_tracks_the_real_one(method, net):
    unit = weight_method(method)
    graph = discover(net, torch.zeros(1, 3, 8, 8))
    weight = net.body.weight.detach()
    configs = _candidates(unit, graph, "body")
    errors = unit.proxy_errors(weight, configs)
    assert errors.shape == (len(configs),) and np.all(np.isfinite(errors))
    assert np.all(errors >= 0) and np.all(errors <= 1.5)
    settings = BuildSettings(seed=0, options={"kmeans_iterations": 8})
    for config, estimate in zip(configs, errors, strict=True):
        if config not in _sample(configs):
            continue
        with torch.no_grad():
            approx = unit.build(weight, config, settings)()
        real = float((approx - weight).square().sum() / weight.square().sum())
        # The proxy may estimate (VQ does), but within a factor that keeps rankings sensible.
        assert real <= 4 * estimate + 1e-3 and estimate <= 4 * real + 1e-3, (config, real, estimate)


@pytest.mark.parametrize("method", WEIGHT_UNITS)
def test_apply_export_load_is_exact_and_payload_is_predicted(method, net, net_graph, tmp_path):
    unit = weight_method(method)
    x = torch.randn(8, 3, 8, 8)
    for config in _sample(_candidates(unit, net_graph, "body")):
        model = copy.deepcopy(net)
        plan = Plan({"body": LayerPlan(weights=config)}, fingerprint=net_graph.fingerprint)
        apply_plan_(model, plan, example_inputs=x[:1], config=QUIET)
        with torch.no_grad():
            applied = model(x)
        report = export(model, tmp_path / "m.cpz")
        with torch.no_grad():
            frozen = model(x)
            loaded = load(tmp_path / "m.cpz", model=_Net())(x)
            plain = deployed(model)(x)
        assert torch.equal(frozen, loaded), config
        assert (frozen - applied).abs().max() < 1e-4  # freezing only folds and rounds
        assert (plain - frozen).abs().max() < 1e-5  # the deployed form computes the same
        predicted = size_report(plan, net_graph).total_bits / 8
        assert 0 <= report.payload_bytes - predicted < max(report.packed_tensors, 1), config


@pytest.mark.parametrize("method", WEIGHT_UNITS)
def test_check_refuses_configs_that_do_not_fit_after_pruning(method, net_graph):
    """validate_plan asks the unit; a unit that accepts any row length passes trivially."""
    unit = weight_method(method)
    spec = net_graph.layers["body"]
    for config in _candidates(unit, net_graph, "body"):
        for row in (spec.row_length - 1, 7):
            try:
                unit.check(config, row_length=row, layer="body", pruned=True)
            except PlanError as error:
                assert error.layer == "body" and error.field.startswith("weights.")


def test_vq_check_names_the_pruned_row_length(net_graph):
    keeps = {net_graph.layers["stem"].group: 0.5}
    row = pruned_row_length(net_graph.layers["body"], net_graph, keeps)
    assert row == 24 * 9
    with pytest.raises(PlanError, match=f"D={row} after pruning"):
        weight_method("vq").check(
            weight_method("vq").config_type(k=16, m=48), row_length=row, layer="body", pruned=True
        )


def test_registration_refuses_taken_names_and_knobs_and_cleans_up():
    class AnotherVQ(VectorQuantization):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_weight_method(AnotherVQ)

    class Renamed(VectorQuantization):
        name = "vq2"

    with pytest.raises(ValueError, match="method must be 'vq2'"):
        register_weight_method(Renamed)
    assert [u.name for u in weight_methods()] == WEIGHT_UNITS
    with pytest.raises(PlanError, match="not a registered weight method"):
        weight_method("vq2")


def test_registered_context_removes_the_unit_on_errors():
    from search_spaces.methods.vq import VQConfig, VQKnobs

    class Config(VQConfig):
        method = "vq_copy"

    class Knobs_(VQKnobs):
        pass

    class Copy(VectorQuantization):
        name = "vq_copy"
        config_type = Config
        knobs_type = Knobs_

    # VQ's knob names are taken
    with pytest.raises(ValueError, match="knob names"), registered(Copy):
        pass
    assert "vq_copy" not in [u.name for u in weight_methods()]


# -- activation methods -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ACTIVATION_UNITS)
def test_activation_configs_round_trip_and_32_bits_is_none(method):
    from search_spaces.methods import activation_method

    unit = activation_method(method)
    assert unit.config(32) is None and all(b < 32 for b in unit.bits)
    for bits in unit.bits:
        config = unit.config(bits)
        assert config.bits == bits and config.method == method
        plan = Plan({"body": LayerPlan(activations=config)})
        assert Plan.from_json(plan.to_json()) == plan and plan["body"].act_bits == bits
    with pytest.raises(PlanError) as error:
        LayerPlan.from_dict({"activations": {"method": method, "bits": 5}}, layer="body")
    assert error.value.field == "activations.bits"


@pytest.mark.parametrize("method", ACTIVATION_UNITS)
def test_activation_proxy_falls_with_bits(method):
    from search_spaces.methods import activation_method

    unit = activation_method(method)
    errors = [unit.proxy_error(b) for b in sorted(unit.bits)]
    assert all(0 <= e <= 1 for e in errors)
    assert errors == sorted(errors, reverse=True)
    assert errors[0] > errors[-1] or len(errors) == 1  # a unit of one bit-width (uint8)


@pytest.mark.parametrize("method", ACTIVATION_UNITS)
def test_activation_deployed_form_and_skeleton_match_the_built_quantizer(method):
    from search_spaces.methods import activation_method

    unit = activation_method(method)
    torch.manual_seed(0)
    x = torch.relu(torch.randn(4, 8, 6, 6))
    for bits in unit.bits:
        config = unit.config(bits)
        built = unit.build(config, x)
        skeleton = unit.skeleton(config)
        skeleton.load_state_dict(built.state_dict())
        with torch.no_grad():
            out = built(x)
            assert torch.equal(unit.deployed(built)(x), out)
            assert torch.equal(skeleton(x), out)
        assert out.unique().numel() <= 2**bits


@pytest.mark.parametrize("method", ACTIVATION_UNITS)
def test_activation_apply_export_load_is_exact(method, net, net_graph, tmp_path):
    from search_spaces.methods import activation_method

    unit = activation_method(method)
    x = torch.randn(16, 3, 8, 8)
    config = unit.config(min(unit.bits))
    model = copy.deepcopy(net)
    plan = Plan({"body": LayerPlan(activations=config)}, fingerprint=net_graph.fingerprint)
    apply_plan_(model, plan, calibration=x, config=QUIET)
    report = export(model, tmp_path / "a.cpz")
    with torch.no_grad():
        frozen = freeze_(model)(x)
        assert torch.equal(load(tmp_path / "a.cpz", model=_Net())(x), frozen)
        assert (deployed(model)(x) - frozen).abs().max() < 1e-5
    assert report.extra_bytes > 0  # the quantizer's state is stored, counted apart
    assert report.payload_bytes == size_report(plan, net_graph).total_bits / 8


# -- ONNX forms ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", WEIGHT_UNITS)
def test_onnx_form_decodes_the_weight_exactly_from_the_stored_payload(method, net, net_graph):
    unit = weight_method(method)
    for config in _sample(_candidates(unit, net_graph, "body"), n=5):
        model = copy.deepcopy(net)
        plan = Plan({"body": LayerPlan(weights=config)}, fingerprint=net_graph.fingerprint)
        apply_plan_(model, plan, example_inputs=torch.zeros(1, 3, 8, 8), config=QUIET)
        source = freeze_(model).body.weight_source
        form = unit.onnx_weight(source)
        with torch.no_grad():
            assert torch.equal(form(), source()), config
        stored = sum(b.numel() * b.element_size() for b in form.buffers())
        payload, _ = unit.export_tensors(source)
        assert stored == sum(t.numel() * t.element_size() for t in payload.values()), config


@pytest.mark.parametrize("method", WEIGHT_UNITS + [f"act:{a}" for a in ACTIVATION_UNITS])
def test_onnx_export_runs_in_a_plain_session_with_the_same_outputs(
    method, net, net_graph, tmp_path
):
    import onnxruntime

    from engine.onnx_export import export_onnx

    x = torch.randn(16, 3, 8, 8)
    if method.startswith("act:"):
        from search_spaces.methods import activation_method

        unit = activation_method(method[4:])
        layer_plan = LayerPlan(activations=unit.config(min(unit.bits)))
    else:
        layer_plan = LayerPlan(weights=_candidates(weight_method(method), net_graph, "body")[0])
    model = copy.deepcopy(net)
    plan = Plan({"body": layer_plan}, fingerprint=net_graph.fingerprint)
    apply_plan_(model, plan, calibration=x, config=QUIET)
    export(model, tmp_path / "m.cpz")
    compressed = load(tmp_path / "m.cpz", model=_Net())
    report = export_onnx(compressed, x[:1], tmp_path / "m.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    (ran,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = compressed(x)
    # An int8 kernel rounds its output in integers: a level apart here and there (mean-pooled).
    atol = 1e-3 if method == "act:uint8" else 1e-4
    assert torch.allclose(torch.from_numpy(ran), expected, atol=atol, rtol=1e-4), method
    predicted = size_report(plan, net_graph).total_bits / 8
    assert report.dynamic_batch
    # A BatchNorm merged into an int8 layer (engine.int8_outputs) adds its shift to the bias:
    # one vector fewer than the size model counts.
    merged = sum(
        4 * m.bias.numel()
        for m in compressed.modules()
        if isinstance(m, PlannedLayer) and m.post is not None and m.bias is not None
    )
    assert report.planned_bytes <= predicted <= report.payload_bytes + merged
