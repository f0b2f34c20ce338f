"""Output files: checked before the work that fills them, then written whole or not at all.

Every file compplan writes (plans, exported models, latency records and predictors, CSVs,
plots) goes through here:
- `check_output_path(path, what)` refuses, before any slow work, a path that is a directory, a
  device or another file that is not a regular one, a symbolic link, or one in a folder that
  does not exist: writing "over" `/dev/full` or through a link to a file elsewhere is never
  what a user asked for.
- `check_distinct_files(outputs, inputs)` refuses an output that is the same file as an input
  of the same command, or as another of its outputs (after links and `..` are resolved): a
  command never writes over what it reads, nor one output over another.
- `write_atomically(path, data)` writes to an unnamed temporary file in the same folder
  (`O_TMPFILE`, so a process killed half-way leaves nothing behind; a hidden named file where
  the filesystem lacks it), fsyncs it, and renames it over `path`. A reader, or a crash at any
  moment, sees the old file or the new one, never a part of one. The new file has the mode the
  umask gives (0666 & ~umask), like any file the user's shell creates.
Here, beside `data_file`, because every package writes files and `search_spaces` is the one
they all import.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from search_spaces.printable import has_control, printable

__all__ = [
    "OutputFileError",
    "check_distinct_files",
    "check_output_path",
    "write_atomically",
    "write_text_atomically",
]

_MODE = 0o666  # before the umask, as open() and the shell create files


class OutputFileError(ValueError):
    """An output path that cannot or must not be written; the message says what to do."""


def check_output_path(path: str | Path, what: str = "output file") -> Path:
    """`path`, if it can take a new regular file; call it before the work that fills it.

    Args:
        path: where the file will be written.
        what: how messages name it ("--out", "the trials CSV").

    Raises:
        OutputFileError: the path is a directory, a device, a pipe or another special file, a
            symbolic link, or in a folder that does not exist or cannot be written.
    """
    if has_control(os.fspath(path)):
        raise OutputFileError(
            f"{what} {printable(os.fspath(path))}: a path with control characters; give another"
        )
    path = Path(path)
    try:
        info = path.lstat()
    except FileNotFoundError:
        info = None
    except OSError as error:
        raise OutputFileError(f"{what} {path}: {error.strerror}") from None
    if info is not None:
        if stat.S_ISLNK(info.st_mode):
            target = os.path.realpath(path)
            raise OutputFileError(
                f"{what} {path} is a symbolic link (to {target}); give the path it points to, "
                "or another name"
            )
        if stat.S_ISDIR(info.st_mode):
            raise OutputFileError(f"{what} {path} is a directory; give a file path in it")
        if not stat.S_ISREG(info.st_mode):
            raise OutputFileError(
                f"{what} {path} is a device or another special file, not a regular file; give "
                "a file path"
            )
    folder = path.parent
    if not folder.is_dir():
        raise OutputFileError(f"{what} {path}: the folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputFileError(f"{what} {path}: the folder {folder} is not writable")
    return path


def check_distinct_files(
    outputs: Mapping[str, str | Path | None], inputs: Mapping[str, str | Path | None]
) -> None:
    """Refuse outputs that would overwrite an input or each other; call it before any work.

    Args:
        outputs: how messages name each output ("--out") → its path (None: not given).
        inputs: the same for the command's inputs ("--plan", "--storage").

    Raises:
        OutputFileError: an output is the same file as an input or as an earlier output,
            naming both.
    """
    seen: list[tuple[str, tuple]] = [
        (name, _identity(path)) for name, path in inputs.items() if path is not None
    ]
    for name, path in outputs.items():
        if path is None:
            continue
        identity = _identity(path)
        for other, known in seen:
            if _same(identity, known):
                is_input = other in inputs
                advice = (
                    "compplan never writes over its inputs; give another file"
                    if is_input
                    else "give each output its own file"
                )
                raise OutputFileError(f"{name} {path} is the same file as {other}: {advice}")
        seen.append((name, identity))


def _identity(path: str | Path) -> tuple:
    """(the resolved path, (device, inode) where the file exists): two names of one file
    share one of them, hard links and `..` included."""
    resolved = os.path.realpath(path)
    try:
        info = os.stat(resolved)
    except OSError:
        return (resolved, None)
    return (resolved, (info.st_dev, info.st_ino))


def _same(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] or (a[1] is not None and a[1] == b[1])


def write_atomically(path: str | Path, data: bytes | Iterable[bytes], what: str = "") -> Path:
    """Write `data` (bytes, or chunks of them) to `path` atomically (see the module docstring).

    Raises:
        OutputFileError: the path is refused (`check_output_path`), or writing failed (a full
            disk, a file-size limit); the old file, if any, is then left as it was.
    """
    path = check_output_path(path, what or "output file")
    chunks = [data] if isinstance(data, bytes | bytearray | memoryview) else data
    folder = str(path.parent)
    fd, named = _open_temporary(path)
    try:
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
            if named is None:  # give the unnamed file a name, only now that it is whole
                named = _link_unnamed(fd, path)
        finally:
            os.close(fd)
        os.replace(named, path)
        named = None
    except OSError as error:
        raise OutputFileError(
            f"cannot write {path}: {error.strerror or error}; the old file, if any, is unchanged"
        ) from None
    finally:
        if named is not None:
            _remove(named)
    _fsync_folder(folder)
    return path


def write_text_atomically(path: str | Path, text: str, what: str = "") -> Path:
    """`write_atomically` for text (UTF-8)."""
    return write_atomically(path, text.encode(), what)


def _open_temporary(path: Path) -> tuple[int, str | None]:
    """A file descriptor open for writing in `path`'s folder, and its name (None: unnamed)."""
    folder = str(path.parent)
    flag = getattr(os, "O_TMPFILE", None)
    if flag is not None:
        try:
            return os.open(folder, flag | os.O_WRONLY | os.O_CLOEXEC, _MODE), None
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise OutputFileError(f"cannot write {path}: {error.strerror}") from None
    named = _temporary_name(path)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        return os.open(named, flags, _MODE), named
    except OSError as error:
        raise OutputFileError(f"cannot write {path}: {error.strerror}") from None


def _link_unnamed(fd: int, path: Path) -> str:
    """Give the unnamed file `fd` a temporary name in `path`'s folder; returns the name."""
    named = _temporary_name(path)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # A directory fd makes os.link use linkat(AT_SYMLINK_FOLLOW); without one CPython calls
        # link(), which links the /proc symlink itself and fails across filesystems.
        os.link(f"/proc/self/fd/{fd}", named, src_dir_fd=folder, follow_symlinks=True)
    finally:
        os.close(folder)
    return named


def _temporary_name(path: Path) -> str:
    return str(path.parent / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")


def _remove(name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name)


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable (the folder's entry), where the OS allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
