"""A compression kind added from this file alone: ternary weights (TWN, Li et al. 2016).

Each weight becomes `scale_c · t`, t in {−1, 0, +1}: zero below `threshold · mean|W_c|`, the sign
above it, and `scale_c` the mean |W| of channel c's weights above the threshold. Stored as 2-bit
codes (t + 1, bit-packed) and one fp32 scale per output channel: `2·N + 32·C_out` bits.

The unit is registered for this module's tests only (`registered`), then searched by the
planner, sized, applied, exported and loaded, with no edit anywhere else in compplan.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from engine import ApplyConfig, apply_plan_, export, load
from engine.deploy import deployed
from planner import Budget, Planner
from predictors.size import SizePredictor, size_report
from search_spaces import Knobs, LayerPlan, Plan, PlanError, SearchSpace, discover
from search_spaces.methods import (
    BuildSettings,
    WeightConfig,
    WeightMethod,
    WeightShapes,
    check_knob,
    registered,
    weight_methods,
)
from search_spaces.methods.bitpack import pack_bits, unpack_bits
from zoo.digits import INPUT_SHAPE, DigitsNet


@dataclass(frozen=True)
class TernaryConfig(WeightConfig):
    """Ternary weights; `threshold` is the zero band's half-width in units of mean |W_c|."""

    method = "ternary"
    threshold: float = 0.7

    def __post_init__(self) -> None:
        if not isinstance(self.threshold, float) or not 0.0 < self.threshold < 2.0:
            raise PlanError(f"threshold={self.threshold!r} is not in (0, 2)", field="threshold")


@dataclass(frozen=True)
class TernaryKnobs:
    ternary_threshold: tuple[float, ...] = (0.5, 0.7, 0.9)

    def __post_init__(self) -> None:
        check_knob(self.ternary_threshold, lambda v: 0 < v < 2, "ternary_threshold", "in (0, 2)")


class TernaryWeight(nn.Module):
    """Fixed codes t + 1 in {0, 1, 2} and a trainable scale per output channel."""

    def __init__(self, codes: Tensor, scale: Tensor):
        super().__init__()
        self.register_buffer("codes", codes.to(torch.int64).clone())
        self.scale = nn.Parameter(scale.float().clone())

    def forward(self) -> Tensor:
        view = (-1,) + (1,) * (self.codes.dim() - 1)
        return self.scale.view(view) * (self.codes - 1).float()


def _ternarize(weight: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    rows = weight.detach().float().reshape(weight.shape[0], -1)
    delta = threshold * rows.abs().mean(1, keepdim=True)
    t = torch.where(rows > delta, 1, torch.where(rows < -delta, -1, 0))
    kept = t != 0
    scale = (rows.abs() * kept).sum(1) / kept.sum(1).clamp(min=1)
    return (t + 1).reshape(weight.shape), scale


class Ternary(WeightMethod):
    name = "ternary"
    config_type = TernaryConfig
    knobs_type = TernaryKnobs
    columns = ("threshold_permille",)

    def parameters(self, knobs: TernaryKnobs) -> dict[str, tuple]:
        return {"ternary_threshold": knobs.ternary_threshold}

    def decode(self, values: Mapping[str, Any]) -> TernaryConfig:
        return TernaryConfig(threshold=float(values["ternary_threshold"]))

    def to_columns(self, config: TernaryConfig) -> tuple[int, ...]:
        return (round(1000 * config.threshold),)

    def bits(self, columns, shapes: WeightShapes) -> dict[str, np.ndarray]:
        return {"codes": 2 * shapes.elements, "scales": 32 * shapes.out_channels}

    def storage_key(self, config, *, out_channels, row_length) -> tuple:
        return (config.threshold,)

    def proxy_errors(self, weight: Tensor, configs: Sequence[TernaryConfig]) -> np.ndarray:
        errors = []
        for config in configs:
            with torch.no_grad():
                approx = self.build(weight, config, BuildSettings())()
            errors.append(float((approx - weight).square().sum() / weight.square().sum()))
        return np.asarray(errors)

    def build(self, weight: Tensor, config: TernaryConfig, settings: BuildSettings) -> nn.Module:
        codes, scale = _ternarize(weight, config.threshold)
        return TernaryWeight(codes, scale).to(weight.device)

    def export_tensors(self, source: TernaryWeight):
        tensors = {"codes": pack_bits(source.codes, 2), "scale": source.scale.detach().cpu()}
        return tensors, {"shape": list(source.codes.shape)}

    def load_source(self, meta, tensors) -> nn.Module:
        shape = tuple(meta["shape"])
        codes = unpack_bits(tensors["codes"], 2, int(np.prod(shape))).reshape(shape)
        return TernaryWeight(codes, tensors["scale"])


@pytest.fixture(scope="module", autouse=True)
def ternary_registered():
    with registered(Ternary):
        yield
    assert "ternary" not in [unit.name for unit in weight_methods()]


@pytest.fixture(scope="module")
def digits():
    torch.manual_seed(0)
    model = DigitsNet().eval()
    with torch.no_grad():
        model.train()
        model(torch.rand(64, *INPUT_SHAPE[1:]))
        model.eval()
    return model, discover(model, torch.zeros(INPUT_SHAPE), model_name="zoo:digits")


def test_the_new_kind_is_in_the_plan_format_and_the_space(digits):
    _, graph = digits
    plan = Plan({"blocks.0.conv1": LayerPlan(weights=TernaryConfig(threshold=0.5))})
    text = plan.to_json()
    assert '"method": "ternary"' in text and Plan.from_json(text) == plan
    with pytest.raises(PlanError, match="threshold") as error:
        LayerPlan.from_dict({"weights": {"method": "ternary", "threshold": 3.0}}, layer="x")
    assert error.value.field == "weights.threshold"
    space = SearchSpace(graph, Knobs(methods=("ternary", "vq"), ternary_threshold=(0.6, 0.8)))
    dists = space.to_optuna()
    assert dists["blocks.0.conv1/ternary_threshold"].choices == (0.6, 0.8)
    assert dists["blocks.0.conv1/method"].choices == ("ternary", "vq")
    assert space.decode({})["blocks.0.conv1"].weights == TernaryConfig(threshold=0.6)


def test_the_new_kind_is_searched_sized_applied_exported_and_loaded(digits, tmp_path):
    model, graph = digits
    inner = [n for n in graph.layers if n not in (graph.first_conv, graph.classifier)]
    budget = Budget(size_bytes=SizePredictor(graph).predict([Plan({})])[0] / 6)
    planner = Planner(
        model,
        torch.rand(32, *INPUT_SHAPE[1:]),
        graph=graph,
        budget=budget,
        knobs={"methods": ("ternary", "none"), "keep": (1.0,), "act_bits": (32,)},
        storage="memory",
        sampler="random",
    )
    result = planner.search(n_trials=12)
    plan = result.best_plan
    assert plan is not None
    # 32-bit weights cannot reach a sixth of the size: the search must pick ternary layers.
    ternary = [n for n in inner if plan.get(n).method == "ternary"]
    assert ternary and {plan[n].weights.threshold for n in ternary} <= {0.5, 0.7, 0.9}

    report = size_report(plan, graph)
    assert report.size_bytes <= budget.size_bytes
    for layer in report.layers:
        if layer.method == "ternary":
            spec = graph.layers[layer.name]
            assert layer.parts == {"codes": 2 * spec.weight_elems, "scales": 32 * spec.out_channels}

    compressed = copy.deepcopy(model)
    apply_plan_(
        compressed,
        plan,
        example_inputs=torch.zeros(INPUT_SHAPE),
        config=ApplyConfig(progress=False),
    )
    x = torch.rand(16, *INPUT_SHAPE[1:])
    written = export(compressed, tmp_path / "ternary.cpz", model_spec="zoo:digits")
    # 2-bit codes of layers with N divisible by 4 pack without padding: exactly the prediction.
    assert written.payload_bytes * 8 == report.total_bits
    with torch.no_grad():
        frozen = compressed(x)
        loaded = load(tmp_path / "ternary.cpz")
        assert torch.equal(loaded(x), frozen)
        assert (deployed(compressed)(x) - frozen).abs().max() < 1e-5
    codes = loaded.get_submodule(ternary[0]).weight_source.codes
    assert set(codes.unique().tolist()) <= {0, 1, 2}
