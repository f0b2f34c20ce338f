"""The activation quantizer as a deployed model runs it: fixed thresholds, a data-independent cost.

`ActivationQuantizer.forward` counts the thresholds below each input with `torch.bucketize`, a
binary search that branches on every element, so its time depends on where the data fall among
the thresholds. On one EPYC core, 8 bits over 16×112×112 activations took 4.5 ms on N(0, 1) data
and 8 ms on data spread over the thresholds (which is what calibration makes them). A deployed
model's latency would then depend on its inputs, and a latency model profiled on random inputs
would be wrong about the calibrated model.

`FrozenActivationQuantizer` gives the same outputs (bit for bit, for float32 inputs) at a cost that
depends only on the input's size and the bit-width:
- up to `_MAX_COMPARED` thresholds (2 and 3 bits): the count is a sum of comparisons, branch-free;
- more (4 and 8 bits): each input falls into one cell of a uniform grid over the thresholds; a table
  gives the count of thresholds in the cells below it and the (at most `width`) thresholds in
  its cell, which are compared.

Exactness of the grid: the cell of a value is `clamp(floor((v − t_0) · scale), −1, cells) + 1`,
computed with the same float operations for the thresholds (when the table is built) and for the
inputs. Each step is monotone in v under round-to-nearest, so a threshold in a lower cell is below
the input and one in a higher cell is above it; only those in the input's own cell need a
comparison.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from search_spaces.methods.quantizers import ActivationQuantizer

__all__ = ["FrozenActivationQuantizer", "ThresholdsOnlyQuantizer"]

# Comparisons cost a pass over the input each: beyond 7 thresholds the grid is cheaper.
_MAX_COMPARED = 7
# Cells per threshold to start with, and the most cells tried before accepting wider cells.
_CELLS_PER_THRESHOLD = 4
_MAX_CELLS = 1 << 16


class FrozenActivationQuantizer(nn.Module):
    """An `ActivationQuantizer`'s forward at inference, with fixed parameters.

    Build it with `FrozenActivationQuantizer.of(quantizer)`. For float32 inputs its outputs equal
    the quantizer's (`out_start + out_step · c`, c the number of thresholds strictly below the
    input); other dtypes go through `torch.bucketize` as the quantizer does. NaN inputs give the
    lowest level. It has no parameters and no gradient.
    """

    thresholds: Tensor
    out_start: Tensor
    out_step: Tensor
    cell_base: Tensor
    cell_thresholds: Tensor

    def __init__(
        self, thresholds: Tensor, out_start: float, out_step: float, bits: int | None = None
    ) -> None:
        super().__init__()
        thresholds = thresholds.detach().to(torch.float32).reshape(-1)
        if thresholds.numel() == 0 or bool((thresholds[1:] < thresholds[:-1]).any()):
            raise ValueError("thresholds must be a non-empty nondecreasing sequence")
        self.bits = bits
        self.register_buffer("thresholds", thresholds.clone())
        self.register_buffer("out_start", torch.tensor(float(out_start)))
        self.register_buffer("out_step", torch.tensor(float(out_step)))
        # Python floats for the comparison path: no device sync when reading them.
        self._compared = thresholds.tolist() if thresholds.numel() <= _MAX_COMPARED else None
        self._build_grid(thresholds)

    @classmethod
    def of(cls, quantizer: ActivationQuantizer) -> FrozenActivationQuantizer:
        """The frozen form of `quantizer` as its parameters stand now."""
        with torch.no_grad():
            return cls(
                quantizer.thresholds().cpu(),
                float(quantizer.out_start),
                float(quantizer.out_step),
                bits=quantizer.bits,
            ).to(quantizer.start.device)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, thresholds={self.thresholds.numel()}"

    def _cell(self, values: Tensor) -> Tensor:
        """Cell index 0…cells + 1 of each value (0 below the grid, cells + 1 above it)."""
        scaled = torch.floor((values - self._origin) * self._scale)
        return torch.clamp(scaled, -1, self._cells).long().add_(1).clamp_(0, self._cells + 1)

    def _build_grid(self, thresholds: Tensor) -> None:
        self._origin = float(thresholds[0])
        span = float(thresholds[-1]) - self._origin
        cells = _CELLS_PER_THRESHOLD * (thresholds.numel() + 1)
        while True:
            self._cells = cells
            self._scale = cells / span if span > 0 else 1.0
            index = self._cell(thresholds)
            per_cell = torch.bincount(index, minlength=cells + 2)
            if int(per_cell.max()) <= 1 or cells >= _MAX_CELLS:
                break
            cells *= 2
        width = int(per_cell.max())  # equal thresholds share a cell at any resolution
        below = torch.cumsum(per_cell, 0) - per_cell
        table = torch.full((width, cells + 2), float("inf"))
        slot = torch.arange(thresholds.numel()) - below[index]
        table[slot, index] = thresholds
        self.register_buffer("cell_base", below.to(torch.float32))
        self.register_buffer("cell_thresholds", table)

    def counts(self, x: Tensor) -> Tensor:
        """The number of thresholds strictly below each element of `x`, as float32."""
        if x.dtype != torch.float32:
            return torch.bucketize(x, self.thresholds.to(x.dtype)).to(torch.float32)
        if self._compared is not None:
            count = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
            for threshold in self._compared:
                count.add_(x > threshold)
            return count.to(torch.float32)
        cell = self._cell(x)
        count = self.cell_base.take(cell)
        for row in self.cell_thresholds:
            count.add_(x > row.take(cell))
        return count

    def forward(self, x: Tensor) -> Tensor:
        return self.out_start + self.out_step * self.counts(x)


class ThresholdsOnlyQuantizer(nn.Module):
    """A `FrozenActivationQuantizer` in its ONNX form: the file stores its thresholds and two
    scalars, and its grid tables are computed from the thresholds by standard operators, which
    a runtime folds once, at load (the tables hold about 4·(cells + 2) floats: 4 KiB for an
    8-bit quantizer, against its 1 KiB of thresholds). The cell layout (origin, scale, number
    of cells, slots per cell) is the frozen quantizer's, as constants, so the tables and the
    outputs are the frozen quantizer's, bit for bit, for float32 inputs.
    """

    thresholds: Tensor
    out_start: Tensor
    out_step: Tensor

    def __init__(self, frozen: FrozenActivationQuantizer) -> None:
        super().__init__()
        self.bits = frozen.bits
        self.register_buffer("thresholds", frozen.thresholds.clone())
        self.register_buffer("out_start", frozen.out_start.clone())
        self.register_buffer("out_step", frozen.out_step.clone())
        self._compared = frozen._compared
        self._origin, self._scale, self._cells = frozen._origin, frozen._scale, frozen._cells
        self._width = frozen.cell_thresholds.shape[0]

    def _cell(self, values: Tensor) -> Tensor:
        scaled = torch.floor((values - self._origin) * self._scale)
        return torch.clamp(scaled, -1, self._cells).long().add(1).clamp(0, self._cells + 1)

    def _tables(self) -> tuple[Tensor, Tensor]:
        """(count of thresholds in the cells below each cell, float32; the thresholds in each
        cell, one row per slot, +inf where a cell has fewer): `FrozenActivationQuantizer`'s
        `cell_base` and `cell_thresholds`, without bincount or scatter."""
        t = self.thresholds
        index = self._cell(t)  # nondecreasing: slots fill each cell in order
        cells = torch.arange(self._cells + 2, device=t.device)
        hits = index[:, None] == cells[None, :]  # (thresholds, cells)
        per_cell = hits.long().sum(0)
        below = torch.cumsum(per_cell, 0) - per_cell
        slot = torch.arange(t.numel(), device=t.device) - below[index]
        slots = torch.arange(self._width, device=t.device)
        placed = (slot[:, None, None] == slots[None, :, None]) & hits[:, None, :]
        values = (placed.to(t.dtype) * t[:, None, None]).sum(0)
        table = torch.where(placed.any(0), values, torch.full_like(values, float("inf")))
        return below.to(torch.float32), table

    def forward(self, x: Tensor) -> Tensor:
        if self._compared is not None:
            count = torch.zeros_like(x)
            for threshold in self._compared:
                count = count + (x > threshold).to(x.dtype)
        else:
            cell_base, table = self._tables()
            cell = self._cell(x)
            count = cell_base.take(cell)
            for row in range(self._width):
                count = count + (x > table[row].take(cell)).to(x.dtype)
        return self.out_start + self.out_step * count
