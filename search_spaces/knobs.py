"""The knobs of a layer plan and the rules that make a value valid (DESIGN.md, "Knobs").

These are plain functions of layer facts, shared by plan validation, the search space, the size
predictor and the engine, so that all of them agree on what a value means.
"""

from __future__ import annotations

import math

__all__ = [
    "ACT_BITS",
    "K_MAX",
    "K_MIN",
    "LR_MULTS",
    "WEIGHT_BITS",
    "divisors",
    "effective_k",
    "is_int",
    "is_number",
    "is_power_of_two",
    "kept_channels",
]

K_MIN, K_MAX = 2, 4096
WEIGHT_BITS = (1, 2, 3, 4, 8, 16, 32)
ACT_BITS = (2, 3, 4, 8, 32)
# P-Transfer's per-layer fine-tune learning-rate multipliers; 0 freezes the layer.
LR_MULTS = (0.0, 0.01, 0.1, 1.0)


def is_int(value: object) -> bool:
    """An int that is not a bool (JSON's true is not a bit-width)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A finite int or float that is not a bool."""
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


def is_power_of_two(value: int) -> bool:
    return isinstance(value, int) and value > 0 and value & (value - 1) == 0


def divisors(n: int) -> tuple[int, ...]:
    """All positive divisors of n, ascending."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return tuple(sorted(set(small + [n // d for d in small])))


def effective_k(k: int, out_channels: int, row_length: int, m: int) -> int:
    """Clusters actually used: `min(k, largest power of two ≤ C_out·(D/m)/4)`.

    PQF's rule: a codebook never has more entries than a quarter of the subvectors it encodes,
    so tiny layers do not get a codebook bigger than their weights. Never below 1.
    """
    subvectors = out_channels * (row_length // m)
    cap = max(1, subvectors // 4)
    return min(k, 1 << (cap.bit_length() - 1))


def kept_channels(channels: int, keep: float) -> int:
    """Channels left after pruning `channels` with keep ratio `keep` in (0, 1].

    Counts are whole channels; from 32 channels up they are rounded to multiples of 8, which the
    CPU and GPU kernels run faster at and which keeps VQ subvector lengths dividing rows. At least
    one channel (eight from 32 up) always stays.
    """
    if keep >= 1.0:
        return channels
    # Halves round up (not to even): keep 0.5 of 40 channels is 24, not 16.
    if channels >= 32:
        return min(channels, max(8, 8 * math.floor(channels * keep / 8 + 0.5)))
    return min(channels, max(1, math.floor(channels * keep + 0.5)))
