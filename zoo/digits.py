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

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from zoo._cache import CACHE_ENV_VAR, cached_pretrained, default_cache_dir
from zoo._nets import ResidualBlockNd, SmallResNet
from zoo._training import ClassifierRecipe, ClassifierSplits, evaluate, split_accuracy

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

CACHE_FILENAME = "digits-v1.pt"
NUM_CLASSES = 10


@dataclass(frozen=True)
class DigitsSplits(ClassifierSplits):
    """Train/validation/test tensors for the digits task.

    Attributes:
        train_x: ``N x 1 x 8 x 8`` float32 images in ``[0, 1]``.
        train_y: ``N`` int64 labels.
        val_x: Validation images.
        val_y: Validation labels.
        test_x: Test images.
        test_y: Test labels.
    """


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

    def _split(i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = np.sort(i)
        return images[i], labels[i]

    return DigitsSplits.from_arrays(_split(train_idx), _split(val_idx), _split(test_idx))


class ResidualBlock(ResidualBlockNd):
    """Two 3x3 conv/BN layers plus a shortcut; a 1x1 projection when shape changes (arguments:
    :class:`zoo._nets.ResidualBlockNd`'s)."""

    dims = 2


class DigitsNet(SmallResNet):
    """Residual CNN for ``1 x 8 x 8`` digit images (``N x 1 x 8 x 8`` in, ``N x 10`` logits out).

    Layout (module names in brackets): stem conv/BN/ReLU [``stem.0/1/2``] at 8x8, then
    ``blocks.0`` (width -> width, 8x8), ``blocks.1`` (width -> 2*width, stride 2 to 4x4, with a
    1x1 projection ``blocks.1.downsample.0``), ``blocks.2`` (2*width, 4x4), global average pool,
    and ``fc``. That is 8 Conv2d layers, 3 residual adds, and ~600k parameters at ``width=64``.

    Args:
        width: Channels of the first stage; the second stage has twice as many.
        num_classes: Number of output logits.
    """

    def __init__(self, width: int = 64, num_classes: int = NUM_CLASSES) -> None:
        stages = [(width, width, 1), (width, 2 * width, 2), (2 * width, 2 * width, 1)]
        super().__init__(ResidualBlock, stem_kernel=3, stages=stages, num_classes=num_classes)


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


_RECIPE = ClassifierRecipe(
    name="digits", architecture=DigitsNet, load_splits=load_digits_splits, augment=_random_shift
)


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
    return _RECIPE.train(
        model, splits, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=progress
    )


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
    return split_accuracy(model, split, splits, load_digits_splits)


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
    # No model is passed to train_digits so that it initializes one under its seed: the cached
    # weights are then reproducible across machines with the same torch build. It is looked up
    # when called, so that tests can replace it.
    return cached_pretrained(
        CACHE_FILENAME, DigitsNet, lambda: train_digits(progress=progress), cache_dir
    )
