"""Merging folded BatchNorms into the convolutions they follow, in the deployed form."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from engine.deploy import deployed_structure
from engine.export import freeze_
from engine.layers import FoldedBatchNorm
from engine.merge_batchnorm import merge_batchnorms_
from search_spaces.plan import Plan
from zoo.digits import DigitsNet


def _with_random_statistics(model: nn.Module) -> nn.Module:
    """BatchNorms whose scale and shift are far from 1 and 0, so a wrong merge shows."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 2 - 1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 2 - 1)
    return model.eval()


def _folded(model: nn.Module) -> int:
    return sum(isinstance(m, FoldedBatchNorm) for m in model.modules())


def _merged_agrees(model: nn.Module, x: torch.Tensor) -> tuple[int, nn.Module]:
    """(merges made, the merged copy), asserting it computes what the folded model does."""
    folded = freeze_(copy.deepcopy(_with_random_statistics(model)))
    merged = copy.deepcopy(folded)
    count = merge_batchnorms_(merged)
    with torch.no_grad():
        assert torch.allclose(merged(x), folded(x), atol=1e-5)
    return count, merged


class _SharedOutput(nn.Module):
    """conv → bn, and the conv's output is also added to the result: the BatchNorm must stay."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.tail = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))

    def forward(self, x):
        y = self.conv(x)
        return self.tail(self.bn(y) + y)


class _Untraceable(nn.Module):
    """Data-dependent control flow defeats the tracer; its Sequential pair still merges."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.conv = nn.Conv2d(4, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.stem(x)
        if y.sum() > 0:  # fx cannot trace this
            y = y * 2
        return self.bn(self.conv(y))


class _Tied(nn.Module):
    """One convolution called twice, each call followed by a BatchNorm of its own."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn_a, self.bn_b = nn.BatchNorm2d(3), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn_b(self.conv(self.bn_a(self.conv(x))))


def test_every_batchnorm_of_a_residual_network_merges_and_the_outputs_hold():
    torch.manual_seed(0)
    count, merged = _merged_agrees(DigitsNet(width=8), torch.rand(4, 1, 8, 8))
    assert count == 8 and _folded(merged) == 0  # every conv (the projection too) has its own
    assert merged.get_submodule("stem.0").bias is not None  # the shift is its bias now


def test_a_batchnorm_that_is_not_its_convolutions_only_reader_stays():
    torch.manual_seed(0)
    count, merged = _merged_agrees(_SharedOutput(), torch.rand(2, 3, 6, 6))
    assert count == 1
    assert isinstance(merged.bn, FoldedBatchNorm)  # y is read twice
    assert isinstance(merged.tail[1], nn.Identity)


def test_an_untraceable_model_merges_its_sequential_pairs_only():
    torch.manual_seed(0)
    count, merged = _merged_agrees(_Untraceable(), torch.rand(2, 3, 6, 6))
    assert count == 1
    assert isinstance(merged.stem[1], nn.Identity)
    assert isinstance(merged.bn, FoldedBatchNorm)  # no trace: its reader is unknown


def test_a_convolution_called_twice_keeps_its_batchnorms():
    torch.manual_seed(0)
    count, merged = _merged_agrees(_Tied(), torch.rand(2, 3, 6, 6))
    assert count == 0 and _folded(merged) == 2


@pytest.mark.parametrize("keep", [1.0, 0.5])
def test_the_profiled_structure_runs_without_batchnorm_steps(keep):
    from search_spaces.discover import discover
    from search_spaces.plan import LayerPlan

    torch.manual_seed(0)
    model = _with_random_statistics(DigitsNet(width=8))
    x = torch.rand(2, 1, 8, 8)
    graph = discover(model, x, cache=False)
    plan = Plan({n: LayerPlan(keep=keep) for g in graph.groups if g.prunable for n in g.layers})
    structure = deployed_structure(model, plan, x, graph=graph)
    assert _folded(structure) == 0
    if keep == 1.0:
        with torch.no_grad():
            assert torch.allclose(structure(x), freeze_(copy.deepcopy(model))(x), atol=1e-5)
