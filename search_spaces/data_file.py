"""Data files: the user's arrays, as `--data FILE` and `--inputs FILE` give them.

A data file is `.npz` (NumPy, read without pickle) or `.pt` (a dict of tensors or arrays, read
with `torch.load(weights_only=True)`): neither can run code. It holds `x`, the inputs, of any
dtype (float images, integer token ids; float64 is read as float32 and other integers as int64,
what models and `nn.Embedding` take), and perhaps labels and held-out splits (`engine.task_data`).
Here, because the example inputs of every command that takes a model come from it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["DataFileError", "read_arrays"]

_SUFFIXES = (".npz", ".pt")


class DataFileError(ValueError):
    """A data file that cannot be used; the message says what to do."""


def _tensor(name: str, value: object, path: Path) -> Tensor:
    array = value.detach().cpu() if isinstance(value, Tensor) else None
    if array is None:
        try:
            array = torch.from_numpy(np.ascontiguousarray(value))
        except TypeError:
            raise DataFileError(
                f"{path}: array '{name}' is a {type(value).__name__}, not numbers; save numeric "
                "arrays"
            ) from None
    if array.dtype == torch.float64:
        return array.float()
    if array.dtype in (torch.int8, torch.int16, torch.int32, torch.uint8):
        return array.long()
    return array


# The last files read, by (path, mtime, size): a command reads its data file for the example
# inputs and again for the task, and a data set of gigabytes should be read once.
_RECENT: dict[tuple[str, int, int], dict[str, Tensor]] = {}
_RECENT_FILES = 2


def read_arrays(path: str | Path, *, flag: str = "--data") -> dict[str, Tensor]:
    """The arrays of a data file, as tensors, after checking it has `x`.

    A file read again unchanged (same size and modification time) comes from memory; the
    tensors are shared, so callers index them (copies) rather than change them in place.

    Raises:
        DataFileError: the file is missing, of another kind, unreadable, or has no `x`.
    """
    path = Path(path)
    key = None
    if path.is_file():
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if key in _RECENT:
            return dict(_RECENT[key])
    arrays = _read(path, flag)
    if key is not None:
        while len(_RECENT) >= _RECENT_FILES:
            _RECENT.pop(next(iter(_RECENT)))
        _RECENT[key] = arrays
    return dict(arrays)


def _read(path: Path, flag: str) -> dict[str, Tensor]:
    if path.suffix.lower() not in _SUFFIXES:
        raise DataFileError(f"{flag} {path}: give a .npz or .pt file (arrays x, and y for labels)")
    if not path.is_file():
        raise DataFileError(f"{flag} {path}: no such file")
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                raw = {name: archive[name] for name in archive.files}
        else:
            raw = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataFileError(
            f"{flag} {path}: not a readable {path.suffix} data file ({first})"
        ) from None
    if not isinstance(raw, dict):
        raise DataFileError(
            f"{flag} {path}: holds a {type(raw).__name__}; save a dict of arrays, e.g. "
            "torch.save({'x': x, 'y': y}, FILE)"
        )
    if "x" not in raw:
        has = ", ".join(sorted(map(str, raw))) or "nothing"
        raise DataFileError(
            f"{flag} {path}: has no array 'x' (it has {has}); save the inputs as x, e.g. "
            "numpy.savez(FILE, x=inputs, y=labels)"
        )
    arrays = {str(name): _tensor(str(name), value, path) for name, value in raw.items()}
    if arrays["x"].ndim == 0 or len(arrays["x"]) == 0:
        raise DataFileError(f"{flag} {path}: x holds no examples")
    return arrays
