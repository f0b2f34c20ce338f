"""The MNIST-1D task: a small 1-D residual CNN trained on Greydanus's MNIST-1D (2020).

Contract:
    * Data is generated offline by :func:`mnist1d.data.make_dataset` with the package's default
      arguments (5000 samples, seed 42: the published dataset); nothing is downloaded, ever.
      Generating draws from the global ``numpy`` and ``random`` RNGs (the package seeds them), so
      their states are saved and restored around it: using this module never changes the
      caller's RNG. Inputs are float32 tensors shaped ``N x 1 x 40`` (the dataset's own
      normalization: mean 0, standard deviation 1); labels are int64 in ``0..9``.
    * :func:`load_mnist1d_splits` keeps the dataset's own 4000/1000 train/test split and carves a
      stratified validation split of 500 out of train (3500 / 500 / 1000): a pure function of
      ``seed`` (the test split never depends on it); the three splits are disjoint.
    * :class:`Mnist1dNet` is a residual Conv1d network (9 Conv1d layers of widths 32/64/128 plus a
      Linear classifier, ~111k parameters) with readable module names (``stem.0``,
      ``blocks.0.conv1``, ``blocks.1.downsample.0``, ``fc``).
    * :func:`train_mnist1d` is deterministic for a given ``seed`` and torch thread count, reaches
      >= 97% test accuracy (published: logistic regression 32%, MLP 68%, CNN ~94%; this residual
      network with shift augmentation gets ~99%), and takes ~25 s on a 2-core CPU.
    * :func:`pretrained_mnist1d` trains once and caches the ``state_dict`` as ``mnist1d-v1.pt``
      exactly as :func:`zoo.digits.pretrained_digits` caches ``digits-v1.pt`` (same directory
      rules, atomic write, lock file, ``weights_only`` load, rebuilt with a warning when
      unreadable). Bump the file name's version whenever the architecture or training recipe
      changes.
"""

from __future__ import annotations

import functools
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from zoo._cache import cached_pretrained
from zoo._nets import ResidualBlockNd, SmallResNet
from zoo._training import ClassifierRecipe, ClassifierSplits, split_accuracy

__all__ = [
    "CACHE_FILENAME",
    "INPUT_SHAPE",
    "Mnist1dNet",
    "Mnist1dSplits",
    "ResidualBlock1d",
    "accuracy_on",
    "load_mnist1d_splits",
    "pretrained_mnist1d",
    "train_mnist1d",
]

INPUT_SHAPE: tuple[int, int, int] = (1, 1, 40)
"""Example input shape (batch 1) for :class:`Mnist1dNet`."""

CACHE_FILENAME = "mnist1d-v1.pt"
NUM_CLASSES = 10
VAL_SIZE = 500
"""Validation examples carved out of the dataset's 4000 training examples."""


@dataclass(frozen=True)
class Mnist1dSplits(ClassifierSplits):
    """Train/validation/test tensors for the MNIST-1D task.

    Attributes:
        train_x: ``N x 1 x 40`` float32 signals.
        train_y: ``N`` int64 labels.
        val_x: Validation signals.
        val_y: Validation labels.
        test_x: Test signals (the dataset's own test split).
        test_y: Test labels.
    """


@functools.cache
def _generate() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The published MNIST-1D (default arguments), generated once per process, read-only."""
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset reseeds the global numpy and random RNGs; put the caller's states back.
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    arrays = (
        np.asarray(data["x"], dtype=np.float32),
        np.asarray(data["y"], dtype=np.int64),
        np.asarray(data["x_test"], dtype=np.float32),
        np.asarray(data["y_test"], dtype=np.int64),
    )
    for a in arrays:
        a.setflags(write=False)
    return arrays


def load_mnist1d_splits(seed: int = 0) -> Mnist1dSplits:
    """MNIST-1D with the dataset's test split and a stratified validation split out of train.

    Args:
        seed: Seed of the train/validation split; the same seed always gives the same split.

    Returns:
        The three disjoint splits (3500 / 500 / 1000 samples).
    """
    from sklearn.model_selection import train_test_split

    x, y, x_test, y_test = _generate()
    train_idx, val_idx = train_test_split(
        np.arange(len(y)), test_size=VAL_SIZE, stratify=y, random_state=seed
    )

    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    return Mnist1dSplits.from_arrays(
        (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx]), (x_test, y_test)
    )


class ResidualBlock1d(ResidualBlockNd):
    """Two Conv1d/BN layers (kernel 3) plus a shortcut; a 1x1 projection when the shape changes
    (arguments: :class:`zoo._nets.ResidualBlockNd`'s)."""

    dims = 1


class Mnist1dNet(SmallResNet):
    """Residual Conv1d network for ``1 x 40`` MNIST-1D signals (``N x 1 x 40`` in, logits out).

    Layout (module names in brackets): stem conv (kernel 5)/BN/ReLU [``stem.0/1/2``] at length
    40, ``blocks.0`` (width, 40), ``blocks.1`` (width -> 2*width, stride 2 to 20, with a 1x1
    projection ``blocks.1.downsample.0``), ``blocks.2`` (2*width -> 4*width, stride 2 to 10,
    projection ``blocks.2.downsample.0``), global average pool and ``fc``. That is 9 Conv1d
    layers whose sizes span three orders of magnitude (160 to 49k weights), 3 residual adds, and
    ~113k parameters at ``width=32``.

    Args:
        width: Channels of the first stage; the next two have twice and four times as many.
        num_classes: Number of output logits.
    """

    def __init__(self, width: int = 32, num_classes: int = NUM_CLASSES) -> None:
        stages = [(width, width, 1), (width, 2 * width, 2), (2 * width, 4 * width, 2)]
        super().__init__(ResidualBlock1d, stem_kernel=5, stages=stages, num_classes=num_classes)


def _random_shift(x: Tensor, generator: torch.Generator, max_shift: int = 3) -> Tensor:
    """Shift each signal by up to ``max_shift`` positions either way, filling with zeros.

    MNIST-1D's digits already sit at random offsets in their padding (which is ~0 after the
    dataset's normalization), so small shifts keep the label and enlarge the training set.
    """
    n, _, length = x.shape
    padded = F.pad(x, (max_shift, max_shift))
    offset = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    cols = offset[:, None] + torch.arange(length)  # n x length
    return padded[torch.arange(n)[:, None], 0, cols].unsqueeze(1)


_RECIPE = ClassifierRecipe(
    name="mnist1d", architecture=Mnist1dNet, load_splits=load_mnist1d_splits, augment=_random_shift
)


def train_mnist1d(
    model: nn.Module | None = None,
    *,
    splits: Mnist1dSplits | None = None,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
) -> nn.Module:
    """Train an MNIST-1D classifier with AdamW, a one-cycle schedule and random shifts.

    Args:
        model: Model to train in place; a fresh :class:`Mnist1dNet` (initialized under ``seed``)
            when ``None``.
        splits: Data; ``load_mnist1d_splits(seed)`` when ``None``. Only ``train_*`` is used.
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


def accuracy_on(
    model: nn.Module, split: str = "test", splits: Mnist1dSplits | None = None
) -> float:
    """Accuracy of ``model`` on one split of the MNIST-1D task.

    Args:
        model: Classifier for ``N x 1 x 40`` inputs.
        split: ``"train"``, ``"val"`` or ``"test"``.
        splits: Data; ``load_mnist1d_splits()`` when ``None``.

    Returns:
        Accuracy in ``[0, 1]``.

    Raises:
        ValueError: If ``split`` is not one of the three names.
    """
    return split_accuracy(model, split, splits, load_mnist1d_splits)


def pretrained_mnist1d(
    *, cache_dir: str | os.PathLike[str] | None = None, progress: bool = True
) -> nn.Module:
    """Return a trained :class:`Mnist1dNet` in eval mode, training and caching it on first use.

    Caching works as in :func:`zoo.digits.pretrained_digits`: a corrupt or incompatible file is
    replaced with a warning on the ``"compplan"`` logger, concurrent first calls are serialized
    by ``mnist1d-v1.pt.lock`` (POSIX), and the file is always replaced atomically.

    Args:
        cache_dir: Directory for ``mnist1d-v1.pt``; :func:`zoo.digits.default_cache_dir` when
            ``None``.
        progress: Show a tqdm bar while training.

    Returns:
        The trained model, in eval mode.
    """
    return cached_pretrained(
        CACHE_FILENAME, Mnist1dNet, lambda: train_mnist1d(progress=progress), cache_dir
    )
