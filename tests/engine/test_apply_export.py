"""apply_plan_ for every kind, alone and composed, and the export / load round trip:
identical outputs, and a tensor payload equal to the predicted size up to byte padding."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from engine.apply import apply_plan_
from engine.export import ExportError, export, freeze_, load, read_metadata
from engine.layers import PlannedLayer
from predictors.size import size_report
from search_spaces import BitsConfig, LayerPlan, N2UQConfig, Plan, PlanError, VQConfig, discover
from zoo.digits import INPUT_SHAPE, DigitsNet

SPEC = "zoo:digits"


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    model = DigitsNet().eval()
    # give BatchNorms non-trivial statistics, as a trained model has
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(torch.rand(64, *INPUT_SHAPE[1:]))
        model.eval()
    return model


@pytest.fixture(scope="module")
def graph(base):
    return discover(base, torch.zeros(INPUT_SHAPE), model_name=SPEC)


def _group_keep(graph, keep):
    return {n: keep for g in graph.groups if g.prunable for n in g.layers}


def _plan(graph, kind: str) -> Plan:
    inner = [n for n in graph.layers if n not in (graph.first_conv, graph.classifier)]

    def m(n: str) -> int:
        return 9 if graph.layers[n].kernel_elems == 9 else 4

    layers: dict[str, LayerPlan] = {}
    if kind == "pq":
        layers = {n: LayerPlan(weights=VQConfig(k=64, m=m(n))) for n in inner}
    elif kind == "lr2vq":
        layers = {n: LayerPlan(weights=VQConfig(k=128, m=m(n), d_tilde=3)) for n in inner}
    elif kind.startswith("bits"):
        bits = int(kind[4:])
        layers = {n: LayerPlan(weights=BitsConfig(bits=bits)) for n in inner}
    elif kind == "w2a4":
        layers = {
            n: LayerPlan(weights=BitsConfig(bits=2), activations=N2UQConfig(bits=4)) for n in inner
        }
    elif kind == "a8":
        layers = {n: LayerPlan(activations=N2UQConfig(bits=8)) for n in inner}
    elif kind == "keep":
        layers = {n: LayerPlan(keep=0.5) for n in _group_keep(graph, 0.5)}
    elif kind == "keep+pq":
        layers = {n: LayerPlan(weights=VQConfig(k=64, m=m(n))) for n in inner}
        for n in _group_keep(graph, 0.5):
            layers[n] = replace(layers.get(n, LayerPlan()), keep=0.5)
    elif kind == "keep+bits4+a4":
        layers = {
            n: LayerPlan(weights=BitsConfig(bits=4), activations=N2UQConfig(bits=4)) for n in inner
        }
        for n in _group_keep(graph, 0.5):
            layers[n] = replace(layers.get(n, LayerPlan()), keep=0.5)
    return Plan(layers, model=SPEC, fingerprint=graph.fingerprint)


KINDS = [
    "pq",
    "lr2vq",
    "bits1",
    "bits2",
    "bits4",
    "bits8",
    "w2a4",
    "a8",
    "keep",
    "keep+pq",
    "keep+bits4+a4",
]


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_is_exact_and_payload_is_predicted(base, graph, kind, tmp_path):
    plan = _plan(graph, kind)
    model = copy.deepcopy(base)
    calibration = torch.rand(128, *INPUT_SHAPE[1:])
    apply_plan_(model, plan, calibration=calibration, config=_quiet())
    x = torch.rand(16, *INPUT_SHAPE[1:])
    with torch.no_grad():
        before_freeze = model.eval()(x)
    report = export(model, tmp_path / "m.cpz", model_spec=SPEC, task="digits")
    with torch.no_grad():
        frozen = model(x)
        loaded = load(tmp_path / "m.cpz")(x)
    assert (frozen - loaded).abs().max().item() <= 1e-6
    # freezing folds BatchNorm and fixes quantized weights; it changes outputs only by rounding
    assert (frozen - before_freeze).abs().max().item() < 1e-4
    predicted = size_report(plan, graph).total_bits / 8
    assert 0 <= report.payload_bytes - predicted < max(report.packed_tensors, 1)
    assert report.file_bytes > report.payload_bytes


def test_compressed_model_is_really_smaller_after_pruning(base, graph):
    model = copy.deepcopy(base)
    apply_plan_(
        model, _plan(graph, "keep"), example_inputs=torch.zeros(INPUT_SHAPE), config=_quiet()
    )
    after = discover(model, torch.zeros(INPUT_SHAPE))
    assert after.total_macs < 0.4 * graph.total_macs
    assert model.get_submodule("blocks.0.conv1").weight.shape[:2] == (32, 32)
    assert model(torch.rand(2, *INPUT_SHAPE[1:])).shape == (2, 10)


def test_layers_are_replaced_and_codes_are_buffers(base, graph):
    model = copy.deepcopy(base)
    apply_plan_(
        model, _plan(graph, "lr2vq"), example_inputs=torch.zeros(INPUT_SHAPE), config=_quiet()
    )
    layer = model.get_submodule("blocks.1.conv2")
    assert isinstance(layer, PlannedLayer)
    names = dict(layer.named_parameters())
    assert set(names) == {"weight_source.codebook", "weight_source.projection", "bias"} - (
        set() if layer.bias is not None else {"bias"}
    )
    assert "weight_source.codes" in dict(layer.named_buffers())
    assert not isinstance(model.get_submodule("stem.0"), PlannedLayer)


def test_plan_errors_come_before_any_change(base, graph):
    model = copy.deepcopy(base)
    bad = Plan({"blocks.0.conv1": LayerPlan(weights=VQConfig(k=64, m=7))}, model=SPEC)
    with pytest.raises(PlanError, match="m=7"):
        apply_plan_(model, bad, example_inputs=torch.zeros(INPUT_SHAPE), config=_quiet())
    assert not any(isinstance(m, PlannedLayer) for m in model.modules())
    with pytest.raises(ValueError, match="calibration"):
        apply_plan_(
            model, _plan(graph, "a8"), example_inputs=torch.zeros(INPUT_SHAPE), config=_quiet()
        )


def test_damaged_and_foreign_files_are_clear_errors(base, graph, tmp_path):
    model = copy.deepcopy(base)
    apply_plan_(model, _plan(graph, "pq"), example_inputs=torch.zeros(INPUT_SHAPE), config=_quiet())
    path = tmp_path / "m.cpz"
    export(model, path, model_spec=SPEC)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.cpz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match=r"damaged|not a readable"):
        load(truncated)
    (tmp_path / "junk.cpz").write_bytes(b"not a model")
    with pytest.raises(ExportError, match="not a readable safetensors"):
        read_metadata(tmp_path / "junk.cpz")
    with pytest.raises(ExportError, match="does not exist"):
        load(tmp_path / "missing.cpz")
    other = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 10))
    with pytest.raises(ExportError, match="another model"):
        load(path, model=other)


def test_freeze_is_idempotent(base, graph):
    model = copy.deepcopy(base)
    apply_plan_(
        model, _plan(graph, "bits4"), example_inputs=torch.zeros(INPUT_SHAPE), config=_quiet()
    )
    freeze_(model)
    x = torch.rand(4, *INPUT_SHAPE[1:])
    once = model(x)
    assert torch.equal(freeze_(model)(x), once)


def _quiet():
    from engine.apply import ApplyConfig

    return ApplyConfig(progress=False, kmeans_iterations=10)


def test_quantizer_parameters_train_at_a_tenth_of_their_layer_rate(base, graph):
    from engine.finetune import QUANTIZER_LR_FACTOR, build_param_groups

    model = copy.deepcopy(base)
    plan = _plan(graph, "w2a4")
    plan = Plan({n: replace(lp, lr_mult=0.1) for n, lp in plan.layers.items()})
    apply_plan_(model, plan, calibration=torch.rand(32, *INPUT_SHAPE[1:]), config=_quiet())
    groups = build_param_groups(model, plan, 1e-3)
    layer = "blocks.0.conv1"
    rates = {
        name: g["lr"]
        for g in groups
        if g["layer"] == layer
        for p in g["params"]
        for name, q in model.get_submodule(layer).named_parameters()
        if q is p
    }
    assert rates["weight_source.latent"] == pytest.approx(1e-4)
    assert rates["act_quant.lengths"] == pytest.approx(1e-4 * QUANTIZER_LR_FACTOR)
    assert rates["weight_source.quantizer.alpha"] == pytest.approx(1e-4 * QUANTIZER_LR_FACTOR)


@pytest.mark.parametrize("kind", ["pq", "lr2vq", "bits2", "w2a4", "keep+pq"])
def test_deployed_form_computes_the_same_with_plain_layers(base, graph, kind):
    from engine.deploy import deployed

    model = copy.deepcopy(base)
    apply_plan_(
        model, _plan(graph, kind), calibration=torch.rand(64, *INPUT_SHAPE[1:]), config=_quiet()
    )
    plain = deployed(model)
    assert not any(isinstance(m, PlannedLayer) for m in plain.modules())
    assert any(isinstance(m, PlannedLayer) for m in model.modules())  # the original is untouched
    x = torch.rand(16, *INPUT_SHAPE[1:])
    with torch.no_grad():
        out, frozen = plain(x), freeze_(model)(x)
    if kind == "w2a4":
        # BatchNorms merged into their convs round differently; an activation quantizer
        # downstream may move such a value across one of its thresholds, which moves that
        # sample's outputs by one level's worth, not more.
        same = torch.isclose(out, frozen, atol=1e-5).all(dim=1)
        assert same.float().mean() >= 0.75
        assert (out - frozen).abs().max() < 0.1 * frozen.abs().max()
    else:
        assert torch.allclose(out, frozen, atol=1e-5)


def test_a_model_file_of_an_older_format_is_refused_with_what_to_do(base, graph, tmp_path):
    """Format 1 (before the registry) is not read; the message says how to get a file again."""
    import json as json_

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from engine.export import _META_KEY

    model = copy.deepcopy(base)
    apply_plan_(model, _plan(graph, "bits4"), calibration=torch.rand(8, *INPUT_SHAPE[1:]))
    path = tmp_path / "model.cpz"
    export(model, path, model_spec=SPEC)
    with safe_open(str(path), framework="pt") as handle:
        meta = json_.loads(handle.metadata()[_META_KEY])
    meta["version"] = 1
    save_file(load_file(str(path)), str(path), metadata={_META_KEY: json_.dumps(meta)})
    with pytest.raises(ExportError, match=r"written by an older compplan .* apply its plan again"):
        load(path)
