"""The digits task: a small residual CNN trained on scikit-learn's bundled 8x8 digits.

Contract:
    * Data comes only from :func:`sklearn.datasets.load_digits` (shipped with scikit-learn, so
      nothing is downloaded). Images are float32 tensors shaped ``N x 1 x 8 x 8`` scaled to
      ``[0, 1]`` (pixel / 16); labels are int64 in ``0..9``.
    * :func:`load_digits_splits` returns a stratified ~70/15/15 train/val/test split that is a
      pure function of ``seed``; the three splits are disjoint.
    * :class:`DigitsNet` is a residual CNN (>= 8 Conv2d layers, >= 250k parameters) with
      readable module names (``stem.0``, ``blocks.0.conv1``, ``blocks.1.downsample.0``, ``fc``).
    * :func:`train_digits` is deterministic for a given ``seed`` and torch thread count, reaches
      >= 97% test accuracy, and takes well under a minute on a 2-core CPU.
    * :func:`pretrained_digits` trains once and caches the ``state_dict`` as ``digits-v1.pt`` in
      ``cache_dir``, else ``$COMPPLAN_CACHE_DIR``, else ``platformdirs.user_cache_dir("compplan")``.
      The file is written atomically (temp file + ``os.replace``), read with
      ``torch.load(weights_only=True)``, and rebuilt with a warning on the ``"compplan"`` logger if
      it cannot be loaded. Concurrent first uses are serialized with an advisory lock file so
      only one process trains. Bump the file name's version whenever the architecture or training
      recipe changes, so stale caches are never mistaken for current ones.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

__all__ = [
    "CACHE_ENV_VAR",
    "CACHE_FILENAME",
    "INPUT_SHAPE",
    "DigitsNet",
    "DigitsSplits",
    "ResidualBlock",
    "accuracy_on",
    "default_cache_dir",
    "evaluate",
    "load_digits_splits",
    "pretrained_digits",
    "train_digits",
]

INPUT_SHAPE: tuple[int, int, int, int] = (1, 1, 8, 8)
"""Example input shape (batch 1) for :class:`DigitsNet`."""

CACHE_ENV_VAR = "COMPPLAN_CACHE_DIR"
CACHE_FILENAME = "digits-v1.pt"
NUM_CLASSES = 10

_log = logging.getLogger("compplan")


@dataclass(frozen=True)
class DigitsSplits:
    """Train/validation/test tensors for the digits task.

    Attributes:
        train_x: ``N x 1 x 8 x 8`` float32 images in ``[0, 1]``.
        train_y: ``N`` int64 labels.
        val_x: Validation images.
        val_y: Validation labels.
        test_x: Test images.
        test_y: Test labels.
    """

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor


def load_digits_splits(seed: int = 0) -> DigitsSplits:
    """Load scikit-learn's digits and split them ~70/15/15, stratified by label.

    Args:
        seed: Seed of the split; the same seed always gives the same split.

    Returns:
        The three disjoint splits (1257 / 270 / 270 samples).
    """
    # Imported lazily: sklearn is slow to import and only needed here.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = np.asarray(data.images, dtype=np.float32) / 16.0
    labels = np.asarray(data.target, dtype=np.int64)
    idx = np.arange(len(labels))
    train_idx, rest_idx = train_test_split(idx, test_size=0.30, stratify=labels, random_state=seed)
    val_idx, test_idx = train_test_split(
        rest_idx, test_size=0.50, stratify=labels[rest_idx], random_state=seed
    )

    def _x(i: np.ndarray) -> Tensor:
        return torch.from_numpy(images[np.sort(i)]).unsqueeze(1).contiguous()

    def _y(i: np.ndarray) -> Tensor:
        return torch.from_numpy(labels[np.sort(i)]).contiguous()

    return DigitsSplits(
        train_x=_x(train_idx),
        train_y=_y(train_idx),
        val_x=_x(val_idx),
        val_y=_y(val_idx),
        test_x=_x(test_idx),
        test_y=_y(test_idx),
    )


class ResidualBlock(nn.Module):
    """Two 3x3 conv/BN layers plus a shortcut; a 1x1 projection when shape changes.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of ``conv1`` (and of the projection).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        # A separate module per activation (rather than one shared ReLU) keeps every call site
        # individually addressable for hooks and per-layer analyses.
        self.relu2 = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class DigitsNet(nn.Module):
    """Residual CNN for ``1 x 8 x 8`` digit images.

    Layout (module names in brackets): stem conv/BN/ReLU [``stem.0/1/2``] at 8x8, then
    ``blocks.0`` (width -> width, 8x8), ``blocks.1`` (width -> 2*width, stride 2 to 4x4, with a
    1x1 projection ``blocks.1.downsample.0``), ``blocks.2`` (2*width, 4x4), global average pool,
    and ``fc``. That is 8 Conv2d layers, 3 residual adds, and ~600k parameters at ``width=64``.

    Args:
        width: Channels of the first stage; the second stage has twice as many.
        num_classes: Number of output logits.
    """

    def __init__(self, width: int = 64, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.blocks = nn.Sequential(
            ResidualBlock(width, width),
            ResidualBlock(width, 2 * width, stride=2),
            ResidualBlock(2 * width, 2 * width),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``N x 1 x 8 x 8`` images to ``N x num_classes`` logits."""
        x = self.blocks(self.stem(x))
        return self.fc(self.pool(x).flatten(1))


def _random_shift(x: Tensor, generator: torch.Generator, max_shift: int = 1) -> Tensor:
    """Shift each image by up to ``max_shift`` pixels in each direction, filling with zeros.

    The digits are centred, but how they sit in the 8x8 grid already varies by about a pixel, so
    such shifts keep the label and cheaply enlarge a training set of only ~1.2k images.
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # n x h x 1
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # n x 1 x w
    batch = torch.arange(n)[:, None, None]
    return padded[batch, 0, rows, cols].unsqueeze(1)


def train_digits(
    model: nn.Module | None = None,
    *,
    splits: DigitsSplits | None = None,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
) -> nn.Module:
    """Train a digits classifier with AdamW, a one-cycle schedule and random 1-pixel shifts.

    Args:
        model: Model to train in place; a fresh :class:`DigitsNet` (initialized under ``seed``)
            when ``None``.
        splits: Data; ``load_digits_splits(seed)`` when ``None``. Only ``train_*`` is used.
        epochs: Passes over the training set.
        batch_size: Mini-batch size.
        lr: Peak learning rate of the one-cycle schedule.
        seed: Seeds model init, shuffling and augmentation.
        progress: Show a tqdm bar (on stderr).

    Returns:
        The trained model, in eval mode.
    """
    torch.manual_seed(seed)
    if splits is None:
        splits = load_digits_splits(seed)
    if model is None:
        model = DigitsNet()
    # A private generator keeps shuffling/augmentation reproducible even if other code draws
    # from the global RNG between steps.
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = splits.train_x, splits.train_y
    n = len(y_all)
    steps_per_epoch = (n + batch_size - 1) // batch_size

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch
    )
    model.train()
    bar = tqdm(
        range(epochs),
        desc="training zoo:digits",
        unit="epoch",
        disable=not progress,
        file=sys.stderr,
    )
    for _ in bar:
        perm = torch.randperm(n, generator=gen)
        total_loss = 0.0
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            xb = _random_shift(x_all[idx], gen)
            loss = F.cross_entropy(model(xb), y_all[idx], label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(idx)
        bar.set_postfix(loss=f"{total_loss / n:.4f}")
    bar.close()
    return model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``.

    The model is run in eval mode without gradients; its previous train/eval mode is restored
    afterwards so that calling this mid-training has no side effects.

    Args:
        model: Classifier returning ``N x C`` logits.
        x: Inputs.
        y: Integer labels.
        batch_size: Inference batch size.

    Returns:
        Accuracy in ``[0, 1]`` (0.0 for an empty set).
    """
    if len(y) == 0:
        return 0.0
    was_training = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        correct = 0
        for start in range(0, len(y), batch_size):
            logits = model(x[start : start + batch_size].to(device))
            pred = logits.argmax(dim=1).cpu()
            correct += int((pred == y[start : start + batch_size]).sum())
        return correct / len(y)
    finally:
        model.train(was_training)


def accuracy_on(model: nn.Module, split: str = "test", splits: DigitsSplits | None = None) -> float:
    """Accuracy of ``model`` on one split of the digits task.

    Args:
        model: Classifier for ``N x 1 x 8 x 8`` inputs.
        split: ``"train"``, ``"val"`` or ``"test"``.
        splits: Data; ``load_digits_splits()`` when ``None``.

    Returns:
        Accuracy in ``[0, 1]``.

    Raises:
        ValueError: If ``split`` is not one of the three names.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; choose one of: train, val, test")
    if splits is None:
        splits = load_digits_splits()
    return evaluate(model, getattr(splits, f"{split}_x"), getattr(splits, f"{split}_y"))


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


def _load_cached(path: Path, *, warn: bool) -> nn.Module | None:
    """Load a cached model, or return ``None`` if ``path`` is missing or unusable."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = DigitsNet()
        model.load_state_dict(state)
    # Any failure (truncated zip, foreign pickle, wrong keys/shapes, not a dict) means the file
    # is unusable; rebuilding it is always safe, so don't enumerate exception types.
    except Exception as exc:
        if warn:
            _log.warning("cached digits model %s is unreadable (%s); retraining", path, exc)
        return None
    return model.eval()


def pretrained_digits(
    *, cache_dir: str | os.PathLike[str] | None = None, progress: bool = True
) -> nn.Module:
    """Return a trained :class:`DigitsNet` in eval mode, training and caching it on first use.

    A corrupt or incompatible cache file is replaced (with a warning on the ``"compplan"``
    logger). Concurrent first calls from several processes are serialized by an advisory lock
    file (``digits-v1.pt.lock``, POSIX only) so that only one trains and the others load its
    result; the cache file itself is always replaced atomically, so readers never see a partial
    file even without the lock.

    Args:
        cache_dir: Directory for ``digits-v1.pt``; :func:`default_cache_dir` when ``None``.
        progress: Show a tqdm bar while training.

    Returns:
        The trained model, in eval mode.
    """
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = directory / CACHE_FILENAME
    # Lock-free fast path: a valid cache needs no lock (and works in a read-only directory).
    model = _load_cached(path, warn=False)
    if model is not None:
        return model

    directory.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(directory / f"{CACHE_FILENAME}.lock"):
        # Another process may have written the cache while this one waited for the lock.
        model = _load_cached(path, warn=True)
        if model is not None:
            return model
        # No model is passed in so that train_digits initializes it under its seed: the cached
        # weights are then reproducible across machines with the same torch build.
        model = train_digits(progress=progress)
        _save_atomic(model.state_dict(), path)
    return model.eval()
