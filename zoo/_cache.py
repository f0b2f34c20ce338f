"""The on-disk cache of the zoo's trained models (``digits-v1.pt``, ``mnist1d-v1.pt``, ...).

:func:`cached_pretrained` is what :func:`zoo.digits.pretrained_digits` and
:func:`zoo.mnist1d.pretrained_mnist1d` do: the ``state_dict`` lives in ``cache_dir``, else
``$COMPPLAN_CACHE_DIR``, else ``platformdirs.user_cache_dir("compplan")``; it is written
atomically (temp file + ``os.replace``), read with ``torch.load(weights_only=True)``, and rebuilt
with a warning on the ``"compplan"`` logger if it cannot be loaded. Concurrent first uses are
serialized with an advisory lock file (``<file name>.lock``, POSIX only) so only one process
trains.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import platformdirs
import torch
from torch import Tensor, nn

__all__ = ["CACHE_ENV_VAR", "cached_pretrained", "default_cache_dir"]

CACHE_ENV_VAR = "COMPPLAN_CACHE_DIR"

_log = logging.getLogger("compplan")


def default_cache_dir() -> Path:
    """``$COMPPLAN_CACHE_DIR`` if set and non-empty, else the platform user cache dir."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("compplan"))


def _save_atomic(state: dict[str, Tensor], path: Path) -> None:
    # The temp file lives in the target directory so os.replace is a same-filesystem rename,
    # which is atomic: concurrent readers see either the old file or the complete new one.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; a cache is not secret, and others sharing it must read it.
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an advisory inter-process lock on ``path`` (created if needed) while in the block.

    Without it, concurrent first uses (parallel test workers, CI jobs) would all train at once;
    on a small machine the oversubscribed CPUs make that many times slower than training once.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the atomic replace alone still keeps the cache valid.
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _load_cached(
    path: Path, architecture: Callable[[], nn.Module], what: str, *, warn: bool
) -> nn.Module | None:
    """Load a cached model, or return ``None`` if ``path`` is missing or unusable."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = architecture()
        model.load_state_dict(state)
    # Any failure (truncated zip, foreign pickle, wrong keys/shapes, not a dict) means the file
    # is unusable; rebuilding it is always safe, so don't enumerate exception types.
    except Exception as exc:
        if warn:
            _log.warning("cached %s model %s is unreadable (%s); retraining", what, path, exc)
        return None
    return model.eval()


def cached_pretrained(
    filename: str,
    architecture: Callable[[], nn.Module],
    train: Callable[[], nn.Module],
    cache_dir: str | os.PathLike[str] | None,
) -> nn.Module:
    """The model cached as ``filename``, trained by ``train()`` and cached first if need be.

    Args:
        filename: The cache file's name, ``NAME-vVERSION.pt`` (``digits-v1.pt``); the warning
            about an unreadable file calls the model NAME.
        architecture: Builds the untrained model that the cached ``state_dict`` is loaded into.
        train: Trains the model to cache (called at most once, holding the lock).
        cache_dir: Directory of the file; :func:`default_cache_dir` when ``None``.

    Returns:
        The trained model, in eval mode.
    """
    what = filename.partition("-")[0]
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = directory / filename
    # Lock-free fast path: a valid cache needs no lock (and works in a read-only directory).
    model = _load_cached(path, architecture, what, warn=False)
    if model is not None:
        return model

    directory.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(directory / f"{filename}.lock"):
        # Another process may have written the cache while this one waited for the lock.
        model = _load_cached(path, architecture, what, warn=True)
        if model is not None:
            return model
        model = train()
        _save_atomic(model.state_dict(), path)
    return model.eval()
