"""The `Task` protocol: the user's data and metric, as the engine and the planner take them.

A task gives three things, and nothing in compplan assumes more (nor digits):

- `train_batches(seed)`: the batches to fine-tune on, re-iterable (a `DataLoader`, a list),
  yielding an input tensor `x`, or `(x,)` / `(x, y)`; the same order for the same seed;
- `calibration()`: one batch of inputs, to calibrate activation quantizers and to weigh the
  proxy's layers; its first example is the model's example input;
- `score(model, split)`: how good `model` is on "val" (what searches choose by) or "test" (what
  is reported), higher is better, named by `metric` ("accuracy", "agreement", "cosine", ...).

Optional: `distill`, the distillation loss that fits the model's output ("kl" for logits, "mse"
or "cosine" for embeddings, hidden states and regression outputs); absent or None, it is chosen
from the output (`engine.distill.infer_distill`). `spec`: the task spec that names it again
(`engine.task_spec`), which a `Planner` given the task records for its workers.

Zoo tasks (`zoo.tasks`), tasks on the user's arrays (`engine.task_data`) and any object of the
user's own with these members are tasks; `check_task` says what one lacks. How a task is named on
the command line and recorded in studies and exported files: `engine.task_spec`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = [
    "SPLITS",
    "Task",
    "TaskError",
    "check_task",
    "classification_accuracy",
    "distill_for",
    "mean_cosine",
    "model_outputs",
    "top1_agreement",
]

SPLITS = ("val", "test")
"""The splits `Task.score` takes: "val" for choosing, "test" for reporting."""

_EVAL_BATCH = 256


class TaskError(ValueError):
    """A task that cannot be used as given (a spec that does not resolve, a data file without
    inputs, labels that do not fit the outputs); the message says what to do."""


@runtime_checkable
class Task(Protocol):
    """The data a model is fine-tuned on and the metric it is scored by.

    Attributes:
        name: how messages and records name the task ("digits", "data:train.npz").
        metric: what `score` measures ("accuracy"); higher is better.
    """

    name: str
    metric: str

    def train_batches(self, seed: int = 0) -> Iterable:
        """Re-iterable training batches, `x` or `(x, y)`, in the same order for the same seed."""
        ...

    def calibration(self) -> Tensor:
        """One batch of inputs (a few hundred examples at most), for calibration."""
        ...

    def score(self, model: nn.Module, split: str = "test") -> float:
        """The metric of `model` on `split` ("val" or "test"); higher is better."""
        ...


def check_task(task: object, source: str = "the task") -> Task:
    """`task`, once it has every member of `Task`.

    Raises:
        TaskError: a member is missing, naming it and where the task came from.
    """
    missing = [
        member
        for member in ("name", "metric", "train_batches", "calibration", "score")
        if not hasattr(task, member)
    ]
    if missing:
        raise TaskError(
            f"{source} returned a {type(task).__name__}, which lacks {', '.join(missing)}: a task "
            "needs name, metric, train_batches(seed), calibration() and score(model, split) "
            "(see engine.task)"
        )
    return task  # type: ignore[return-value]


def model_outputs(model: nn.Module, x: Tensor, batch_size: int = _EVAL_BATCH) -> Tensor:
    """`model`'s main output tensor on `x` (`engine.distill.output_of`), in eval mode and
    batches, on the CPU; the model's training flag is restored."""
    from engine.distill import output_of

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            parts = [
                output_of(model(chunk.to(device))).float().cpu()
                for chunk in torch.split(x, batch_size)
            ]
    finally:
        model.train(was_training)
    return torch.cat(parts)


def classification_accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Share of examples (or positions, for `(B, T)` labels) whose arg-max output is the label."""
    predicted = model_outputs(model, x).argmax(dim=-1)
    return (predicted == y.to(predicted.device)).float().mean().item()


def top1_agreement(outputs: Tensor, reference: Tensor) -> float:
    """Share of examples (or positions) where the arg-max over the last dimension is the same."""
    return (outputs.argmax(dim=-1) == reference.argmax(dim=-1)).float().mean().item()


def mean_cosine(outputs: Tensor, reference: Tensor) -> float:
    """Mean cosine similarity over the last dimension (per example, or per token)."""
    a = outputs.reshape(-1, outputs.shape[-1]).float()
    b = reference.reshape(-1, reference.shape[-1]).float()
    return torch.nn.functional.cosine_similarity(a, b, dim=-1).mean().item()


def distill_for(task: object, model: nn.Module, inputs: Tensor) -> tuple[str, str]:
    """(loss, why): the distillation loss that fits `model`'s output, the task's own `distill`
    where it names one, else chosen from the output on `inputs` (`engine.distill.
    infer_distill`)."""
    from engine.distill import infer_distill

    chosen = getattr(task, "distill", None)
    if chosen:
        # A task that chose from the output says why; a fixed one is the task's choice.
        fixed = f"set by the task {getattr(task, 'name', '')}".rstrip()
        return chosen, getattr(task, "why", None) or fixed
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(inputs)
    finally:
        model.train(was_training)
    return infer_distill(output)
