"""The size convention: PQF's published figures, hand-computed layers, and batch = single."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from planner.presets import make_preset
from predictors.size import PlanBatch, SizePredictor, kept_channels_array, size_report
from search_spaces import BitsConfig, LayerPlan, Plan, SearchSpace, VQConfig, discover
from search_spaces.knobs import kept_channels


@pytest.mark.parametrize(
    ("fixture", "preset", "ratio", "mib"),
    [
        ("resnet18_graph", "pqf-small", 28.9, 1.54),
        ("resnet18_graph", "pqf-large", 43.3, 1.03),
        ("resnet50_graph", "pqf-small", 19.1, 5.09),
        ("resnet50_graph", "pqf-large", 30.6, 3.19),
    ],
)
def test_pqf_published_sizes(fixture, preset, ratio, mib, request):
    """PQF (Martinez et al., CVPR 2021), table of ResNet-18/50 compression ratios and sizes."""
    graph = request.getfixturevalue(fixture)
    report = size_report(make_preset(graph, preset), graph)
    assert round(report.compression_ratio, 1) == ratio
    assert round(report.size_mib, 2) == mib


def test_baseline_is_32_bits_per_parameter(resnet18_graph):
    report = size_report(Plan({}), resnet18_graph)
    assert report.total_bits == report.baseline_bits == 32 * 11_689_512
    assert report.compression_ratio == 1.0


class _Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 32, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(32)
        self.b = nn.Conv2d(32, 64, 3, padding=1)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.b(torch.relu(self.bn(self.a(x)))).mean((2, 3)))


@pytest.fixture(scope="module")
def small_graph():
    return discover(_Small(), torch.randn(1, 3, 8, 8))


def test_hand_computed_layers(small_graph):
    plan = Plan(
        {
            "b": LayerPlan(weights=VQConfig(k=256, m=8, d_tilde=4)),  # LR²VQ
            "head": LayerPlan(weights=BitsConfig(bits=4)),
            "a": LayerPlan(keep=0.5),
        }
    )
    report = {layer.name: layer for layer in size_report(plan, small_graph).layers}
    # a: 32 → 16 output channels, 3·9 weights each, no bias; BatchNorm 2 × 32 bits per channel
    assert report["a"].bits == 32 * 16 * 27 + 64 * 16
    # b: inputs 32 → 16, so N = 64·16·9 = 9216, D = 144; N/m = 1152 codes of log2(256) bits;
    # k_eff = min(256, 2^⌊log2(64·18/4)⌋ = 256); codebook 16·256·4; projection 16·4·8; bias 32·64
    assert report["b"].k_eff == 256
    assert report["b"].bits == 1152 * 8 + 16 * 256 * 4 + 16 * 4 * 8 + 32 * 64
    # head: 4-bit weights, a 32-bit scale per output channel, 32-bit bias
    assert report["head"].bits == 4 * 640 + 32 * 10 + 32 * 10


def test_k_is_clamped_to_a_quarter_of_the_subvectors(small_graph):
    plan = Plan({"head": LayerPlan(weights=VQConfig(k=4096, m=4))})
    layer = next(x for x in size_report(plan, small_graph).layers if x.name == "head")
    # 10 rows × 64/4 subvectors = 160; a quarter is 40; the power of two below is 32
    assert layer.k_eff == 32
    assert layer.bits == 160 * 5 + 16 * 32 * 4 + 32 * 10


def test_vectorized_channel_rounding_matches_the_scalar_rule():
    channels = np.arange(1, 300)
    for keep in (0.1, 0.25, 0.33, 0.5, 0.77, 0.99, 1.0):
        expected = [kept_channels(int(c), keep) for c in channels]
        assert kept_channels_array(channels, np.full(channels.shape, keep)).tolist() == expected


@pytest.mark.parametrize("fixture", ["resnet18_graph", "mobilenet_graph"])
def test_batch_prediction_equals_one_by_one(fixture, request):
    graph = request.getfixturevalue(fixture)
    space = SearchSpace(graph)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    plans = []
    for _ in range(64):
        trial = study.ask()
        plans.append(space.suggest(trial))
        study.tell(trial, 0.0)
    batch = SizePredictor(graph).predict_bits(plans)
    single = [size_report(plan, graph).total_bits for plan in plans]
    assert batch.tolist() == single
    assert len(set(single)) > 50  # the plans really differ
    assert PlanBatch.from_plans(graph, plans).keep.min() < 1.0  # and some prune


def test_the_json_parts_of_every_layer_add_up_to_its_bytes(resnet18_graph):
    """`compplan size --json` lists each layer's bits by part; they must sum to its size (the
    method's aggregate beside its parts would count them twice)."""
    methods = set()
    for preset in ("pqf-small", "bits:4+keep:0.5", "bits:1"):
        plan = make_preset(resnet18_graph, preset)
        for layer in size_report(plan, resnet18_graph).to_dict()["layers"]:
            assert sum(layer["bits"].values()) == layer["bytes"] * 8, (preset, layer["name"])
            methods.add(layer["method"])
    assert {"vq", "bits", "none"} <= methods
