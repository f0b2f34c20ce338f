"""Dense bit packing of integer codes for export (VQ codes, b-bit weights).

The layout is the one the size convention counts: `count` values of `bits` bits each, back to back,
in C order, little-endian bit order (bit 0 of value 0 is bit 0 of byte 0), zero-padded to a whole
byte. So `packed_nbytes(count, bits) == ceil(count·bits / 8)` and an exported layer's file holds
exactly the bits `predictors.size` predicted.

- `bits` is 0…16. Zero bits is a one-entry codebook (k_eff = 1): every code is 0, nothing is
  stored, and unpacking gives zeros.
- Packing and unpacking are vectorized (numpy `packbits` / `unpackbits`) and walk the data in
  chunks of whole bytes, so a layer of millions of weights needs only a few MiB of scratch space.
- Everything happens on the CPU; the results are CPU tensors (uint8 packed, int64 unpacked).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["MAX_BITS", "pack_bits", "packed_nbytes", "unpack_bits", "unpack_bits_traced"]

MAX_BITS = 16
# Values per chunk; a multiple of 8, so every chunk starts on a byte boundary whatever `bits` is.
_CHUNK = 1 << 20


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 0 <= bits <= MAX_BITS:
        raise ValueError(
            f"bits must be an integer in 0..{MAX_BITS} (0 for a one-entry codebook), got {bits!r}"
        )


def _check_count(count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative integer, got {count!r}")


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that `count` values of `bits` bits take when packed: ceil(count·bits / 8).

    Raises:
        ValueError: if `bits` is not in 0..16 or `count` is negative.
    """
    _check_bits(bits)
    _check_count(count)
    return (count * bits + 7) // 8


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer `values` (any shape, read in C order) into `bits` bits each.

    Args:
        values: integer tensor whose elements all lie in [0, 2**bits).
        bits: bits per value, 0..16.

    Returns:
        A 1-D CPU `torch.uint8` tensor of exactly `packed_nbytes(values.numel(), bits)` bytes;
        empty when `bits` is 0.

    Raises:
        TypeError: if `values` is not an integer tensor.
        ValueError: if `bits` is outside 0..16 or a value is outside [0, 2**bits).
    """
    _check_bits(bits)
    if values.dtype.is_floating_point or values.dtype.is_complex:
        raise TypeError(f"pack_bits needs an integer tensor, got dtype {values.dtype}")
    flat = values.detach().reshape(-1).cpu().to(torch.int64)
    count = flat.numel()
    if count:
        low, high = int(flat.min()), int(flat.max())
        if low < 0 or high >= 1 << bits:
            raise ValueError(
                f"values must lie in [0, {1 << bits}) to be packed in {bits} bits, "
                f"got values from {low} to {high}"
            )
    if bits == 0:
        return torch.empty(0, dtype=torch.uint8)

    # Values are below 2**16, so uint16 is wide enough and halves the scratch space.
    codes = flat.numpy().astype(np.uint16)
    shifts = np.arange(bits, dtype=np.uint16)
    out = np.empty(packed_nbytes(count, bits), dtype=np.uint8)
    for start in range(0, count, _CHUNK):
        chunk = codes[start : start + _CHUNK]
        # Row i holds value i's bits LSB first; flattening the rows gives the stream's bit order.
        bit_rows = ((chunk[:, None] >> shifts) & 1).astype(np.uint8)
        packed = np.packbits(bit_rows.reshape(-1), bitorder="little")
        first = start * bits // 8
        out[first : first + packed.size] = packed
    return torch.from_numpy(out)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The inverse of `pack_bits`: `count` values of `bits` bits each, as a 1-D int64 tensor.

    Args:
        packed: uint8 tensor (read flattened) of exactly `packed_nbytes(count, bits)` bytes.
        bits: bits per value, 0..16.
        count: number of values to read.

    Returns:
        A 1-D CPU int64 tensor of `count` values in [0, 2**bits); all zeros when `bits` is 0.

    Raises:
        TypeError: if `packed` is not a uint8 tensor.
        ValueError: if `bits` is outside 0..16, `count` is negative, or `packed` does not have
            the expected number of bytes (a truncated or corrupt file).
    """
    _check_bits(bits)
    _check_count(count)
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_bits needs a uint8 tensor, got dtype {packed.dtype}")
    expected = packed_nbytes(count, bits)
    if packed.numel() != expected:
        raise ValueError(
            f"packed data for {count} values of {bits} bits: expected {expected} bytes, got "
            f"{packed.numel()} (truncated or corrupt data?)"
        )
    if bits == 0:
        return torch.zeros(count, dtype=torch.int64)

    raw = packed.detach().reshape(-1).cpu().numpy()
    out = np.empty(count, dtype=np.int64)
    for start in range(0, count, _CHUNK):
        n = min(_CHUNK, count - start)
        first = start * bits // 8
        stream = raw[first : first + packed_nbytes(n, bits)]
        bit_rows = np.unpackbits(stream, count=n * bits, bitorder="little").reshape(n, bits)
        # Re-pack each row into its own one or two little-endian bytes: the value itself.
        value_bytes = np.packbits(bit_rows, axis=1, bitorder="little").astype(np.int64)
        values = value_bytes[:, 0]
        if value_bytes.shape[1] == 2:
            values = values | (value_bytes[:, 1] << 8)
        out[start : start + n] = values
    return torch.from_numpy(out)


def unpack_bits_traced(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """`unpack_bits` written in tensor operations only (int32 division, remainder, a weighted
    sum), so that an exported graph can hold the packed bytes and unpack them itself: every step
    is a standard ONNX operator whose inputs are constants, which a runtime folds at load.

    It takes `count·bits` bytes of scratch per value bit: meant for export, not for speed.
    """
    if bits == 0:
        return torch.zeros(count, dtype=torch.int64)
    place = torch.tensor([1 << j for j in range(8)], dtype=torch.int32)
    stream = torch.remainder(torch.div(packed.to(torch.int32).unsqueeze(-1), place,
                                       rounding_mode="floor"), 2)  # fmt: skip
    stream = stream.reshape(-1)[: count * bits].reshape(count, bits)
    weight = torch.tensor([1 << j for j in range(bits)], dtype=torch.int32)
    return (stream * weight).sum(-1).to(torch.int64)
