"""Plan format: JSON round trip (schema 2, reading schema 1), field checks, and validation."""

from __future__ import annotations

import json

import pytest

from planner.presets import make_preset
from search_spaces import (
    BitsConfig,
    Budget,
    LayerPlan,
    N2UQConfig,
    Plan,
    PlanError,
    VQConfig,
    validate_plan,
)


def test_json_round_trip_keeps_everything(resnet18_graph, tmp_path):
    plan = Plan(
        layers={
            "layer1.0.conv1": LayerPlan(
                weights=VQConfig(k=256, m=9, d_tilde=4),
                activations=N2UQConfig(bits=4),
                lr_mult=0.1,
            ),
            "layer1.0.conv2": LayerPlan(weights=BitsConfig(bits=2), keep=1.0, lr_mult=0.0),
        },
        model="zoo:resnet18",
        fingerprint=resnet18_graph.fingerprint,
        budget=Budget(size_bytes=1_200_000, latency_ms=15.0),
        provenance={"source": "test"},
    )
    path = tmp_path / "plan.json"
    plan.save(path)
    again = Plan.load(path)
    assert again == plan
    assert list(again) == ["layer1.0.conv1", "layer1.0.conv2"]
    assert again["layer1.0.conv1"].method == "vq" and again["layer1.0.conv2"].method == "bits"
    assert again.get("fc") == LayerPlan() and again.get("fc").method == "none"
    data = json.loads(path.read_text())
    assert data["schema_version"] == 2 and data["format"] == "compplan-plan"
    assert data["layers"]["layer1.0.conv2"] == {
        "weights": {"method": "bits", "bits": 2},
        "lr_mult": 0.0,
    }
    assert data["layers"]["layer1.0.conv1"]["weights"] == {
        "method": "vq",
        "k": 256,
        "m": 9,
        "d_tilde": 4,
    }
    assert data["layers"]["layer1.0.conv1"]["activations"] == {"method": "n2uq", "bits": 4}
    validate_plan(again, resnet18_graph)


def test_schema_1_files_are_read_and_saved_as_schema_2(resnet18_graph, tmp_path):
    old = {
        "format": "compplan-plan",
        "schema_version": 1,
        "layers": {
            "layer1.0.conv1": {"k": 256, "m": 9, "d_tilde": 9, "act_bits": 4},
            "layer1.0.conv2": {"weight_bits": 2, "keep": 1.0},
            "layer1.1.conv1": {"weight_bits": 32, "lr_mult": 0.5},
        },
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    plan = Plan.load(path)
    assert plan["layer1.0.conv1"] == LayerPlan(
        weights=VQConfig(k=256, m=9), activations=N2UQConfig(bits=4)
    )
    assert plan["layer1.0.conv2"].weights == BitsConfig(bits=2)
    # 32 weight bits was schema 1's spelling of a dense layer
    assert plan["layer1.1.conv1"] == LayerPlan(lr_mult=0.5)
    plan.save(path)
    assert json.loads(path.read_text())["schema_version"] == 2
    assert Plan.load(path) == plan


def test_layer_plans_are_frozen():
    plan = LayerPlan(weights=VQConfig(k=16, m=4))
    with pytest.raises(AttributeError):
        plan.keep = 0.5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        plan.weights.k = 32  # type: ignore[misc]


@pytest.mark.parametrize(
    ("knobs", "field", "message"),
    [
        ({"k": 300, "m": 9}, "k", "not a power of two"),
        ({"k": 8192, "m": 9}, "k", "outside 2..4096"),
        ({"k": 256}, "m", "needs both k and m"),
        ({"k": 256, "m": 9, "d_tilde": 10}, "d_tilde", "1..m=9"),
        ({"k": 256, "m": 9, "weight_bits": 4}, "weight_bits", "both set"),
        ({"weight_bits": 5}, "weight_bits", "not one of"),
        ({"act_bits": 6}, "act_bits", "not one of"),
        ({"keep": 0.0}, "keep", r"outside \(0, 1\]"),
        ({"keep": 1.5}, "keep", r"outside \(0, 1\]"),
        ({"lr_mult": -1}, "lr_mult", "≥ 0"),
        ({"k": "256", "m": 9}, "k", "must be an integer"),
        ({"k": 256.0, "m": 9}, "k", "must be an integer"),
        ({"weight_bits": True}, "weight_bits", "not one of"),
    ],
)
def test_schema_1_field_errors_name_layer_and_field(knobs, field, message):
    with pytest.raises(PlanError, match=message) as error:
        LayerPlan.from_dict(knobs, layer="layer1.0.conv1", version=1)
    assert error.value.layer == "layer1.0.conv1" and error.value.field == field
    assert str(error.value).startswith(f"layer 'layer1.0.conv1': field '{field}': ")


@pytest.mark.parametrize(
    ("knobs", "field", "message"),
    [
        ({"weights": {"method": "vq", "k": 300, "m": 9}}, "weights.k", "not a power of two"),
        ({"weights": {"method": "vq", "k": 256}}, "weights.m", "needs a value for m"),
        ({"weights": {"method": "vq", "k": 8, "m": 9, "d_tilde": 10}}, "weights.d_tilde", "1..m=9"),
        ({"weights": {"method": "bits", "bits": 5}}, "weights.bits", "not one of"),
        ({"weights": {"method": "bits", "bits": True}}, "weights.bits", "not one of"),
        ({"weights": {"method": "bits", "bitz": 4}}, "weights.bitz", "did you mean 'bits'"),
        ({"weights": {"method": "ternary"}}, "weights.method", "not a registered weight method"),
        ({"weights": {"k": 4}}, "weights", 'with a "method"'),
        ({"activations": {"method": "n2uq", "bits": 6}}, "activations.bits", "not one of"),
        ({"activations": {"method": "lsq", "bits": 4}}, "activations.method", "not a registered"),
        ({"keep": 0.0}, "keep", r"outside \(0, 1\]"),
        ({"lr_mult": -1}, "lr_mult", "≥ 0"),
        ({"k": 256, "m": 9}, "k", "unknown knob"),
    ],
)
def test_schema_2_field_errors_name_layer_and_field(knobs, field, message):
    with pytest.raises(PlanError, match=message) as error:
        LayerPlan.from_dict(knobs, layer="layer1.0.conv1")
    assert error.value.layer == "layer1.0.conv1" and error.value.field == field
    assert str(error.value).startswith(f"layer 'layer1.0.conv1': field '{field}': ")


def test_unknown_knob_suggests_the_right_one():
    with pytest.raises(PlanError, match="did you mean 'keep'"):
        LayerPlan.from_dict({"kep": 0.5}, layer="x")
    with pytest.raises(PlanError, match="did you mean 'weights'"):
        LayerPlan.from_dict({"weight": {"method": "vq", "k": 4, "m": 2}}, layer="x")


def _plan_dict(resnet18_graph, **layers):
    return {
        "format": "compplan-plan",
        "schema_version": 1,
        "model": "zoo:resnet18",
        "fingerprint": resnet18_graph.fingerprint,
        "layers": layers,
    }


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("format"), "not a compplan plan"),
        (lambda d: d.update(schema_version=99), "newer than this compplan reads"),
        (lambda d: d.update(schema_version="one"), "not a schema version"),
        (lambda d: d.update(layers=[]), "mapping layer names"),
        (lambda d: d.update(extra=1), "unknown top-level key"),
        (lambda d: d.update(budget={"size": 3}), "unknown budget keys"),
        (lambda d: d.update(budget={"size_bytes": -3}), "positive number"),
        (lambda d: d["layers"].update({"fc": 4}), "expected a JSON object"),
    ],
)
def test_malformed_documents(resnet18_graph, mutate, message):
    data = _plan_dict(resnet18_graph, fc={"k": 256, "m": 4})
    mutate(data)
    with pytest.raises(PlanError, match=message):
        Plan.from_dict(data)


@pytest.mark.parametrize(
    ("layers", "layer", "field", "message"),
    [
        ({"layer9.conv1": {"k": 256, "m": 9}}, "layer9.conv1", None, "not a compressible layer"),
        (
            {"layer1.0.conv": {"k": 256, "m": 9}},
            "layer1.0.conv",
            None,
            "did you mean 'layer1.0.conv2', 'layer1.0.conv1'",
        ),
        (
            {"layer1.0.conv1": {"k": 256, "m": 7}},
            "layer1.0.conv1",
            "weights.m",
            "does not divide the row length D=576",
        ),
        ({"fc": {"keep": 0.5}}, "fc", "keep", "cannot be pruned"),
        ({"layer1.0.conv2": {"keep": 0.5}}, "conv1", "keep", "coupling group"),
        (
            {
                "layer1.0.conv2": {"keep": 0.5},
                "layer1.1.conv2": {"keep": 0.75},
                "conv1": {"keep": 0.5},
            },
            "layer1.1.conv2",
            "keep",
            "share one keep ratio",
        ),
    ],
)
def test_validation_against_the_model(resnet18_graph, layers, layer, field, message):
    plan = Plan.from_dict(_plan_dict(resnet18_graph, **layers))
    with pytest.raises(PlanError, match=message) as error:
        validate_plan(plan, resnet18_graph)
    assert error.value.layer == layer and error.value.field == field


def test_m_must_divide_the_row_length_after_pruning(resnet18_graph):
    # layer1.1.conv1 reads the 64 channels of the stem stream; keeping 0.75 leaves 48 → D = 432
    stream = ["conv1", "layer1.0.conv2", "layer1.1.conv2"]
    layers = {name: {"keep": 0.75} for name in stream}
    layers["layer1.1.conv1"] = {"k": 256, "m": 64}  # 64 divides 576 but not 432
    plan = Plan.from_dict(_plan_dict(resnet18_graph, **layers))
    with pytest.raises(PlanError, match="D=432 after pruning"):
        validate_plan(plan, resnet18_graph)


def test_plan_for_another_model_is_refused(resnet18_graph, resnet50_graph):
    plan = make_preset(resnet50_graph, "pqf-small")
    with pytest.raises(PlanError, match="made for another model") as error:
        validate_plan(plan, resnet18_graph)
    assert error.value.field == "fingerprint"


def test_load_errors_name_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"format": "compplan-plan", "schema_version": 1, "layers": {')
    with pytest.raises(PlanError, match=r"broken.json: not valid JSON"):
        Plan.load(path)
    with pytest.raises(PlanError, match="does not exist"):
        Plan.load(tmp_path / "missing.json")


def test_plans_copy_and_pickle(resnet18_graph):
    import copy
    import pickle

    plan = make_preset(resnet18_graph, "pqf-small")
    assert copy.deepcopy(plan) == plan == pickle.loads(pickle.dumps(plan))


def test_duplicate_keys_are_refused():
    text = '{"format": "compplan-plan", "schema_version": 1, "layers": {"a": {}, "a": {"k": 4}}}'
    with pytest.raises(PlanError, match="'a' appears twice"):
        Plan.from_json(text)


def test_presets_compose_in_either_order_on_small_layers():
    import torch
    from torch import nn

    from search_spaces import discover

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 10, 1)
            self.b = nn.Conv2d(10, 6, 1)
            self.head = nn.Linear(6, 2)

        def forward(self, x):
            return self.head(self.b(torch.relu(self.a(x))).mean((2, 3)))

    graph = discover(Small(), torch.zeros(1, 3, 4, 4))
    one = make_preset(graph, "keep:0.5+pqf-small")
    two = make_preset(graph, "pqf-small+keep:0.5")
    assert one.layers == two.layers
    # b reads a's 10 channels, pruned to 5: pqf-small's m = 2 (for D = 10) becomes 1
    assert one["b"].keep == 0.5 and one["b"].weights.m == 1
    validate_plan(one, graph)
