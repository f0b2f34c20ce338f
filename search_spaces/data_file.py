"""Data files: the user's arrays, as `--data FILE` and `--inputs FILE` give them.

A data file is `.npz` (NumPy, read without pickle) or `.pt` (a dict of tensors or arrays, read
with `torch.load(weights_only=True)`): neither can run code. It holds `x`, the inputs, of any
dtype (float images, integer token ids; float64 is read as float32 and other integers as int64,
what models and `nn.Embedding` take), and perhaps labels and held-out splits (`engine.task_data`).
Here, because the example inputs of every command that takes a model come from it.

What a file may make compplan allocate is capped before anything is read: the arrays' sizes
are taken from the files' headers (`.npy` headers inside an `.npz`, the storage records of a
`.pt`), and a file whose arrays would take more than `max_data_bytes()` in memory, in all or one
array alone, is refused. A 2 MB archive can declare gigabytes.
"""

from __future__ import annotations

import resource
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from search_spaces.printable import has_control, printable

__all__ = [
    "DataFileError",
    "default_max_data_bytes",
    "max_data_bytes",
    "read_arrays",
    "set_max_data_bytes",
]

_SUFFIXES = (".npz", ".pt")


class DataFileError(ValueError):
    """A data file that cannot be used; the message says what to do."""


_max_bytes: int | None = None  # None: `default_max_data_bytes()`


def set_max_data_bytes(limit: int | None) -> None:
    """Cap what one data file may take in memory, for this process (None: the default)."""
    global _max_bytes
    if limit is not None and limit <= 0:
        raise DataFileError(f"--max-data-bytes must be a positive number of bytes, not {limit}")
    _max_bytes = limit


def max_data_bytes() -> int:
    """The cap in force: `set_max_data_bytes`'s, else `default_max_data_bytes()`."""
    return _max_bytes if _max_bytes is not None else default_max_data_bytes()


def default_max_data_bytes() -> int:
    """A quarter of the memory this process can still take: the machine's available memory,
    or what an address-space limit (RLIMIT_AS) leaves, whichever is less. A data set is read,
    then copied for its splits and batches: a quarter leaves room for those and the model."""
    room = _meminfo_bytes("MemAvailable") or 8 * 2**30
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        room = min(room, max(0, soft - _own_address_space()))
    return max(room // 4, 2**20)


def _meminfo_bytes(field: str) -> int | None:
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _own_address_space() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


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
    from search_spaces.input_file import InputFileError, check_input_file

    if has_control(str(path)):
        raise DataFileError(f"{flag} {printable(str(path))}: a path with control characters")
    if path.suffix.lower() not in _SUFFIXES:
        raise DataFileError(f"{flag} {path}: give a .npz or .pt file (arrays x, and y for labels)")
    if not path.exists():
        raise DataFileError(f"{flag} {path}: no such file")
    try:
        check_input_file(path, flag)
    except InputFileError as error:
        raise DataFileError(str(error)) from None
    _check_declared_size(path, flag)
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                raw = {name: archive[name] for name in archive.files}
        else:
            raw = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "Weights only load failed" in first:  # torch's advice to unpickle: not ours to give
            raise DataFileError(
                f"{flag} {path}: holds Python objects besides tensors and arrays, which compplan "
                "does not unpickle; save a dict of tensors or arrays only"
            ) from None
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


def _check_declared_size(path: Path, flag: str) -> None:
    """Refuse a file whose arrays, as its headers declare them, exceed `max_data_bytes()`."""
    limit = max_data_bytes()
    sizes = _declared_sizes(path, flag)
    name, largest = max(sizes.items(), key=lambda item: item[1], default=("", 0))
    total = sum(sizes.values())
    if total > limit:
        where = f"array '{name}' alone takes {largest:,}" if largest > limit else "in all"
        raise DataFileError(
            f"{flag} {path}: its arrays take {total:,} bytes in memory ({where}), more than the "
            f"{limit:,} allowed; give a smaller file, or raise --max-data-bytes"
        )


def _declared_sizes(path: Path, flag: str) -> dict[str, int]:
    """Bytes in memory of each array in `path`, read from its headers only."""
    if not zipfile.is_zipfile(path):
        if path.suffix.lower() == ".npz":
            raise DataFileError(
                f"{flag} {path}: not a .npz archive (it is not a zip file); save the arrays with "
                "numpy.savez(FILE, x=inputs, y=labels)"
            )
        return {"(file)": path.stat().st_size}  # a legacy .pt holds its storages as they are
    sizes: dict[str, int] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if path.suffix.lower() == ".pt":
                    if "/data/" in info.filename:
                        sizes[info.filename] = info.file_size
                elif info.filename.endswith(".npy"):
                    with archive.open(info) as member:
                        sizes[info.filename[:-4]] = _npy_bytes(member)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise DataFileError(
            f"{flag} {path}: not a readable {path.suffix} data file ({error})"
        ) from None
    return sizes


def _npy_bytes(member) -> int:
    """Bytes of the array a `.npy` stream declares in its header (it is not read)."""
    version = np.lib.format.read_magic(member)
    read_header = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }.get(version)
    if read_header is None:
        raise ValueError(f".npy format version {version} is not read")
    shape, _, dtype = read_header(member, max_header_size=2**16)
    count = 1
    for extent in shape:
        count *= int(extent)
    return count * max(dtype.itemsize, 1)
