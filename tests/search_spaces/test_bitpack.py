"""Bit packing: exact round trips at every width, the byte layout, and clear errors."""

from __future__ import annotations

import time

import pytest
import torch

from search_spaces.methods.bitpack import _CHUNK, pack_bits, packed_nbytes, unpack_bits

BAD_BITS = r"bits must be an integer in 0\.\.16"


@pytest.mark.parametrize("bits", range(17))
@pytest.mark.parametrize("count", [0, 1, 7, 1001])
def test_round_trip_every_width(bits, count):
    generator = torch.Generator().manual_seed(bits * 10_000 + count)
    values = torch.randint(0, 1 << bits, (count,), generator=generator)
    packed = pack_bits(values, bits)
    assert packed.dtype == torch.uint8 and packed.ndim == 1
    assert packed.numel() == packed_nbytes(count, bits) == (count * bits + 7) // 8
    unpacked = unpack_bits(packed, bits, count)
    assert unpacked.dtype == torch.int64
    assert torch.equal(unpacked, values)


@pytest.mark.parametrize("bits", [3, 13])
def test_round_trip_across_chunks(bits):
    """Counts past one internal chunk, ending mid-byte."""
    generator = torch.Generator().manual_seed(bits)
    values = torch.randint(0, 1 << bits, (_CHUNK + 5,), generator=generator)
    assert torch.equal(unpack_bits(pack_bits(values, bits), bits, values.numel()), values)


def test_layout_is_lsb_first_in_c_order():
    assert pack_bits(torch.tensor([1, 0, 1, 1]), 1).tolist() == [0b1101]
    assert pack_bits(torch.tensor([0xA, 0x5]), 4).tolist() == [0x5A]
    # 3-bit values 1 and 2: bits 0–2 hold 1, bits 3–5 hold 2.
    assert pack_bits(torch.tensor([1, 2]), 3).tolist() == [1 | 2 << 3]
    assert pack_bits(torch.tensor([0x1234]), 16).tolist() == [0x34, 0x12]
    grid = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert torch.equal(unpack_bits(pack_bits(grid, 3), 3, 6), grid.reshape(-1))


def test_zero_bits_stores_nothing():
    assert pack_bits(torch.zeros(5, dtype=torch.int64), 0).numel() == 0
    assert packed_nbytes(5, 0) == 0
    assert torch.equal(unpack_bits(torch.empty(0, dtype=torch.uint8), 0, 5), torch.zeros(5).long())


def test_accepts_other_integer_dtypes():
    values = torch.tensor([0, 200, 255], dtype=torch.uint8)
    assert torch.equal(unpack_bits(pack_bits(values, 8), 8, 3), values.long())
    values = torch.tensor([7, 0, 5], dtype=torch.int32)
    assert torch.equal(unpack_bits(pack_bits(values, 3), 3, 3), values.long())


@pytest.mark.parametrize(
    ("values", "bits"),
    [([8], 3), ([-1], 3), ([1], 0), ([65536], 16), ([0, 2], 1)],
)
def test_out_of_range_values_are_refused(values, bits):
    with pytest.raises(ValueError, match=r"must lie in \[0, "):
        pack_bits(torch.tensor(values), bits)


@pytest.mark.parametrize("bits", [-1, 17, 2.0, True])
def test_bad_widths_are_refused(bits):
    with pytest.raises(ValueError, match=BAD_BITS):
        pack_bits(torch.tensor([0]), bits)
    with pytest.raises(ValueError, match=BAD_BITS):
        unpack_bits(torch.zeros(1, dtype=torch.uint8), bits, 1)
    with pytest.raises(ValueError, match=BAD_BITS):
        packed_nbytes(1, bits)


def test_wrong_dtypes_are_refused():
    with pytest.raises(TypeError, match="integer tensor"):
        pack_bits(torch.tensor([1.0]), 4)
    with pytest.raises(TypeError, match="uint8"):
        unpack_bits(torch.zeros(1, dtype=torch.int64), 4, 2)


def test_truncated_data_is_refused_clearly():
    packed = pack_bits(torch.arange(100) % 8, 3)  # 300 bits → 38 bytes
    with pytest.raises(ValueError, match="expected 38 bytes, got 37"):
        unpack_bits(packed[:-1], 3, 100)
    with pytest.raises(ValueError, match="expected 38 bytes, got 39"):
        unpack_bits(torch.cat([packed, packed[:1]]), 3, 100)
    with pytest.raises(ValueError, match="count must be a non-negative integer"):
        unpack_bits(packed, 3, -1)


@pytest.mark.parametrize("bits", [3, 16])
def test_a_million_values_take_well_under_a_second(bits):
    values = torch.randint(0, 1 << bits, (1_000_000,), generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    unpacked = unpack_bits(pack_bits(values, bits), bits, values.numel())
    elapsed = time.perf_counter() - started
    assert torch.equal(unpacked, values)
    assert elapsed < 2.0  # about 0.1 s on one core; the margin absorbs a busy CI machine
