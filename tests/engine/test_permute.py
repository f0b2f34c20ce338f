"""PQF's permutation keeps the model's function and lowers the subvector log-determinant."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from engine.apply import ApplyConfig, apply_plan_
from engine.permute import PermutationError, permute_group_, pqf_permutation, subvector_logdet
from search_spaces import LayerPlan, Plan, VQConfig, discover
from zoo.digits import INPUT_SHAPE, DigitsNet
from zoo.mobilenet import mobilenet_v2


def _warm(model, shape):
    with torch.no_grad():
        model.train()
        for _ in range(2):
            model(torch.rand(32, *shape[1:]))
    return model.eval()


@pytest.mark.parametrize(
    "builder,shape", [(DigitsNet, INPUT_SHAPE), (mobilenet_v2, (1, 3, 64, 64))]
)
def test_permuting_any_prunable_group_keeps_the_function(builder, shape):
    torch.manual_seed(0)
    model = _warm(builder(), shape)
    graph = discover(model, torch.zeros(shape))
    x = torch.rand(4, *shape[1:])
    reference = model(x)
    permuted = 0
    for group in graph.groups:
        if group.prunable:
            permute_group_(model, graph, group.id, torch.randperm(group.channels))
            permuted += 1
    assert permuted >= 4
    assert torch.allclose(model(x), reference, atol=1e-5)


def test_concatenation_is_refused():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
            self.c = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return self.c(torch.cat([self.a(x), self.b(x)], 1))

    model = Cat()
    graph = discover(model, torch.zeros(1, 3, 4, 4))
    group = graph.group_of("a")
    with pytest.raises(PermutationError, match="concatenation"):
        permute_group_(model, graph, group.id, torch.arange(group.channels))


def test_search_lowers_the_log_determinant():
    torch.manual_seed(0)
    # a 1×1 consumer whose 16 input channels come in 4 correlated families, interleaved so that
    # the identity order puts one channel of each family in every subvector of m = 4
    family = torch.randn(4, 32)
    weight = torch.stack([family[c % 4] + 0.05 * torch.randn(32) for c in range(16)], dim=1)
    weight = weight[:, :, None, None]  # (32 out, 16 in, 1, 1)
    identity = subvector_logdet(weight, 4)
    perm = pqf_permutation({"c": (weight, 4)}, 16, swaps=500)
    assert sorted(perm.tolist()) == list(range(16))
    assert subvector_logdet(weight, 4, perm) < identity - 1.0
    # m = K² for a 3×3 consumer: a subvector never spans two channels, nothing to do
    assert torch.equal(pqf_permutation({"c": (torch.randn(8, 16, 3, 3), 9)}, 16), torch.arange(16))


def test_apply_with_permutation_keeps_sizes_and_runs():
    model = _warm(DigitsNet(), INPUT_SHAPE)
    graph = discover(model, torch.zeros(INPUT_SHAPE))
    plan = Plan(
        {
            n: LayerPlan(weights=VQConfig(k=32, m=18))
            for n in graph.layers
            if graph.layers[n].kernel_elems == 9 and n != "stem.0"
        }
    )
    plain, permuted = copy.deepcopy(model), copy.deepcopy(model)
    apply_plan_(
        plain, plan, example_inputs=torch.zeros(INPUT_SHAPE), config=ApplyConfig(progress=False)
    )
    apply_plan_(
        permuted,
        plan,
        example_inputs=torch.zeros(INPUT_SHAPE),
        config=ApplyConfig(progress=False, permute=True, permutation_swaps=200),
    )
    x = torch.rand(8, *INPUT_SHAPE[1:])
    assert permuted(x).shape == plain(x).shape == (8, 10)
