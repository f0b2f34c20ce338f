"""What the zoo's small classifiers (digits, MNIST-1D) share: splits, training loop, scoring.

:class:`ClassifierSplits` holds a task's train/val/test tensors (each module subclasses it with
its own docstring). :func:`train_classifier` is the recipe of :func:`zoo.digits.train_digits`
and :func:`zoo.mnist1d.train_mnist1d` (AdamW, a one-cycle schedule, random shifts, label
smoothing 0.05, a tqdm bar); each passes its own shift, by way of a :class:`ClassifierRecipe`
that also seeds and builds the model first. Shuffling and augmentation draw from a private
generator seeded with ``seed``, in the order the two trainers always have (per epoch one
permutation, then per batch the augmentation's draws), so the same seed gives the same weights.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

__all__ = [
    "ClassifierRecipe",
    "ClassifierSplits",
    "evaluate",
    "split_accuracy",
    "train_classifier",
]

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class ClassifierSplits:
    """Train/validation/test inputs and int64 labels of a classification task."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor

    @classmethod
    def from_arrays(
        cls,
        train: tuple[np.ndarray, np.ndarray],
        val: tuple[np.ndarray, np.ndarray],
        test: tuple[np.ndarray, np.ndarray],
    ) -> Self:
        """Splits of ``(inputs, labels)`` arrays, copied into new tensors (which share no memory
        with the arrays, so callers may write into them); the inputs gain a channel axis
        (``N x ...`` to ``N x 1 x ...``)."""

        def _x(a: np.ndarray) -> Tensor:
            return torch.tensor(a).unsqueeze(1).contiguous()

        def _y(a: np.ndarray) -> Tensor:
            return torch.tensor(a).contiguous()

        (train_x, train_y), (val_x, val_y), (test_x, test_y) = train, val, test
        return cls(
            train_x=_x(train_x),
            train_y=_y(train_y),
            val_x=_x(val_x),
            val_y=_y(val_y),
            test_x=_x(test_x),
            test_y=_y(test_y),
        )


def train_classifier(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    augment: Callable[[Tensor, torch.Generator], Tensor],
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: bool,
    desc: str,
) -> nn.Module:
    """Train ``model`` in place on ``(x, y)`` with AdamW, a one-cycle schedule and ``augment``.

    Args:
        model: Classifier returning ``N x C`` logits (initialized by the caller, under its seed).
        x: Training inputs.
        y: Integer training labels.
        augment: ``augment(batch, generator)``, a label-preserving random transform of a batch
            that draws only from ``generator``.
        epochs: Passes over the training set.
        batch_size: Mini-batch size.
        lr: Peak learning rate of the one-cycle schedule.
        seed: Seeds shuffling and augmentation.
        progress: Show a tqdm bar (on stderr).
        desc: The bar's label.

    Returns:
        The trained model, in eval mode.
    """
    # A private generator keeps shuffling/augmentation reproducible even if other code draws
    # from the global RNG between steps.
    gen = torch.Generator().manual_seed(seed)
    n = len(y)
    steps_per_epoch = (n + batch_size - 1) // batch_size

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch
    )
    model.train()
    bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress, file=sys.stderr)
    for _ in bar:
        perm = torch.randperm(n, generator=gen)
        total_loss = 0.0
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            xb = augment(x[idx], gen)
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(idx)
        bar.set_postfix(loss=f"{total_loss / n:.4f}")
    bar.close()
    return model.eval()


@dataclass(frozen=True)
class ClassifierRecipe:
    """How one of the zoo's classifiers is built and trained (see :meth:`train`).

    Attributes:
        name: The task's name (``"digits"``); the progress bar reads ``training zoo:NAME``.
        architecture: Builds the untrained model.
        load_splits: ``load_splits(seed)``, the task's data.
        augment: The training augmentation (see :func:`train_classifier`).
    """

    name: str
    architecture: Callable[[], nn.Module]
    load_splits: Callable[[int], ClassifierSplits]
    augment: Callable[[Tensor, torch.Generator], Tensor]

    def train(
        self,
        model: nn.Module | None,
        splits: ClassifierSplits | None,
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        seed: int,
        progress: bool,
    ) -> nn.Module:
        """Seed torch's global RNG, load the splits and build the model where not given (in
        that order, so a new model is initialized under ``seed``), then train it with
        :func:`train_classifier` on the training split.
        """
        torch.manual_seed(seed)
        if splits is None:
            splits = self.load_splits(seed)
        if model is None:
            model = self.architecture()
        return train_classifier(
            model,
            splits.train_x,
            splits.train_y,
            augment=self.augment,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            progress=progress,
            desc=f"training zoo:{self.name}",
        )


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


def split_accuracy(
    model: nn.Module,
    split: str,
    splits: ClassifierSplits | None,
    load: Callable[[], ClassifierSplits],
) -> float:
    """Accuracy of ``model`` on ``split`` of ``splits`` (``load()`` when ``None``).

    Raises:
        ValueError: If ``split`` is not ``"train"``, ``"val"`` or ``"test"`` (checked before
            anything is loaded).
    """
    if split not in SPLIT_NAMES:
        raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(SPLIT_NAMES)}")
    if splits is None:
        splits = load()
    return evaluate(model, getattr(splits, f"{split}_x"), getattr(splits, f"{split}_y"))
