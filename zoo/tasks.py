"""Tasks: the data a zoo model is trained on and how it is scored.

Each implements `engine.task.Task` (structurally: the zoo imports nothing of compplan's): batches
to fine-tune on for a seed, a batch of inputs to calibrate quantizers with, and `score(model,
split)`, here test or validation accuracy. Nothing is downloaded: digits ship with scikit-learn.
MNIST-1D is generated on the spot by the `mnist1d` package (never its download).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from zoo._training import ClassifierSplits, evaluate
from zoo.digits import load_digits_splits
from zoo.mnist1d import load_mnist1d_splits

__all__ = ["DigitsTask", "Mnist1dTask", "SplitsTask", "get_task"]


@dataclass(frozen=True)
class SplitsTask:
    """A classification task on fixed train/val/test splits, scored by accuracy."""

    splits: ClassifierSplits
    name: str
    metric: str = "accuracy"
    distill: str = "kl"  # class logits

    @property
    def spec(self) -> str:
        """How studies and exported files record the task: "zoo:NAME"."""
        return f"zoo:{self.name}"

    def train_batches(self, seed: int = 0, *, batch_size: int = 64) -> DataLoader:
        """Shuffled (x, y) batches of the training split, the same order for the same seed."""
        data = TensorDataset(self.splits.train_x, self.splits.train_y)
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator)

    def calibration(self, n: int = 256) -> Tensor:
        """The first `n` training inputs (a fixed batch, for quantizer calibration)."""
        return self.splits.train_x[:n]

    def score(self, model: nn.Module, split: str = "test") -> float:
        """Accuracy on "val", "test" (or "train")."""
        x, y = {
            "train": (self.splits.train_x, self.splits.train_y),
            "val": (self.splits.val_x, self.splits.val_y),
            "test": (self.splits.test_x, self.splits.test_y),
        }[split]
        return evaluate(model, x, y)


@dataclass(frozen=True)
class DigitsTask(SplitsTask):
    """scikit-learn's digits with the zoo's fixed split (1257 train / 270 val / 270 test)."""

    name: str = "digits"


@dataclass(frozen=True)
class Mnist1dTask(SplitsTask):
    """MNIST-1D (the published dataset, generated offline) with the zoo's split (3500 train /
    500 val / 1000 test: the dataset's own test split)."""

    name: str = "mnist1d"


_TASKS = {"digits": (DigitsTask, load_digits_splits), "mnist1d": (Mnist1dTask, load_mnist1d_splits)}


def get_task(name: str, *, seed: int = 0) -> DigitsTask | Mnist1dTask:
    """The task called `name` ("digits" or "mnist1d").

    Raises:
        ValueError: no task has that name.
    """
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; the zoo has: {', '.join(sorted(_TASKS))}")
    task_type, load_splits = _TASKS[name]
    return task_type(load_splits(seed))
