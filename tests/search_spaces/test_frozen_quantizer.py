"""The deployed activation quantizer: the same outputs as N2UQ's quantizer, bit for bit, whatever
the thresholds (calibrated, uneven, equal, at the grid's edges) and the inputs (outside the range,
on a threshold, ±inf)."""

from __future__ import annotations

import pytest
import torch

from search_spaces.methods.frozen_quantizer import FrozenActivationQuantizer
from search_spaces.methods.quantizers import ActivationQuantizer

ACT_BITS = [2, 3, 4, 8]


def _calibrated(bits: int, seed: int) -> ActivationQuantizer:
    generator = torch.Generator().manual_seed(seed)
    quantizer = ActivationQuantizer(bits)
    quantizer.init_from(torch.randn(4096, generator=generator).relu() * 3)
    with torch.no_grad():  # uneven intervals, as fine-tuning leaves them
        factors = torch.rand(quantizer.lengths.shape, generator=generator) * 1.5 + 0.25
        quantizer.lengths.mul_(factors)
    return quantizer


def _inputs(quantizer: ActivationQuantizer, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    thresholds = quantizer.thresholds()
    top = float(thresholds[-1])
    return [
        torch.randn(2, 8, 9, 9, generator=generator) * top,
        torch.rand(3, 50, generator=generator) * top * 1.2 - 0.1 * top,
        thresholds.repeat(2),  # exactly on each threshold: not passed
        torch.nextafter(thresholds, torch.tensor(float("inf"))),  # just above: passed
        torch.tensor([float("inf"), -float("inf"), 0.0, -0.0, 1e30, -1e30]),
    ]


@pytest.mark.parametrize("bits", ACT_BITS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_outputs_equal_the_quantizers_bit_for_bit(bits, seed):
    quantizer = _calibrated(bits, seed)
    frozen = FrozenActivationQuantizer.of(quantizer)
    with torch.no_grad():
        for x in _inputs(quantizer, seed):
            assert torch.equal(frozen(x), quantizer(x))


@pytest.mark.parametrize("bits", ACT_BITS)
def test_default_layout_matches_too(bits):
    quantizer = ActivationQuantizer(bits)  # what deployed_structure profiles
    frozen = FrozenActivationQuantizer.of(quantizer)
    with torch.no_grad():
        x = torch.linspace(-1, 3, 10_001)
        assert torch.equal(frozen(x), quantizer(x))


@pytest.mark.parametrize("count", [3, 7, 15, 255])
def test_equal_and_crowded_thresholds(count):
    # Runs of equal thresholds and a near-collision far below the grid's resolution.
    base = torch.sort(torch.rand(count, generator=torch.Generator().manual_seed(count))).values
    base[count // 3 : count // 3 + 3] = base[count // 3]
    base[-2] = base[-1] - 1e-7
    base = torch.cummax(base, 0).values
    frozen = FrozenActivationQuantizer(base, out_start=0.0, out_step=1.0)
    x = torch.cat([torch.linspace(-0.5, 1.5, 20_001), base, torch.nextafter(base, base + 1)])
    assert torch.equal(frozen.counts(x), torch.bucketize(x, base).to(torch.float32))


def test_other_dtypes_fall_back_to_bucketize():
    quantizer = _calibrated(8, 0)
    frozen = FrozenActivationQuantizer.of(quantizer)
    x = torch.randn(100, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(frozen(x), quantizer(x))


def test_survives_a_state_dict_round_trip_and_has_no_parameters():
    frozen = FrozenActivationQuantizer.of(_calibrated(4, 0))
    assert list(frozen.parameters()) == []
    again = FrozenActivationQuantizer(frozen.thresholds, frozen.out_start, frozen.out_step)
    again.load_state_dict(frozen.state_dict())
    x = torch.randn(1000)
    assert torch.equal(again(x), frozen(x))


def test_unsorted_thresholds_are_refused():
    with pytest.raises(ValueError, match="nondecreasing"):
        FrozenActivationQuantizer(torch.tensor([1.0, 0.0]), 0.0, 1.0)
