"""Tasks on the user's own arrays: labelled data (`--data FILE`) and inputs only (`--inputs FILE`).

A data file is `.npz` (NumPy, read without pickle) or `.pt` (a dict of tensors or arrays, read
with `torch.load(weights_only=True)`): neither can run code. Arrays:

- `x`: the inputs, any dtype (float images, integer token ids); float64 is read as float32 and
  other integers as int64, what models and `nn.Embedding` take;
- `y`: integer class labels, one per example (`(N,)`) or per position (`(N, T)`);
- optionally `x_val`, `y_val`, `x_test`, `y_test`; a split that is not given is carved out of `x`
  by a seeded permutation (15% each), so it is the same on every machine.

`LabelledTask` scores classification accuracy; `FidelityTask` needs no labels: it scores the
student against the original model's own outputs on held-out inputs (top-1 agreement for class
logits, mean cosine similarity for embeddings, hidden states and regression outputs), and its
training batches are inputs only, for distillation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from engine.task import (
    TaskError,
    classification_accuracy,
    mean_cosine,
    model_outputs,
    top1_agreement,
)
from search_spaces.data_file import read_arrays

__all__ = [
    "FidelityTask",
    "LabelledTask",
    "check_model_runs",
    "read_arrays",
    "seeded_split",
]

_HELD_OUT = 0.15
_BATCH = 64
_CALIBRATION = 256


def seeded_split(n: int, seed: int = 0, held_out: float = _HELD_OUT) -> tuple[Tensor, ...]:
    """(train, val, test) indices of `n` examples: a permutation seeded by `seed`, `held_out`
    of them (at least one) each for val and test.

    Raises:
        TaskError: fewer than 3 examples.
    """
    if n < 3:
        raise TaskError(f"{n} examples cannot be split into train, val and test; give at least 3")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = max(1, round(n * held_out))
    return order[2 * k :].sort().values, order[:k].sort().values, order[k : 2 * k].sort().values


def _check_split_rows(x: Tensor, name: str, path: str | Path) -> None:
    """Refuse a split given with no rows: it is never replaced by one carved out of x."""
    if x.ndim == 0 or len(x) == 0:
        hint = "leave it out to carve one from x, or give it rows" if name != "x" else "give rows"
        raise TaskError(f"{path}: {name} has no rows; {hint}")


def _splits(arrays: dict[str, Tensor], keys: tuple[str, ...], seed: int) -> dict[str, tuple]:
    """{"train", "val", "test"} → the arrays named by `keys` ("x", or "x" and "y") of each split:
    the given ones, and the missing held-out splits carved out of `x` (the rest is training)."""
    n = len(arrays["x"])
    missing = [s for s in ("val", "test") if f"x_{s}" not in arrays]
    carved: dict[str, Tensor] = {}
    kept = torch.ones(n, dtype=torch.bool)
    if missing:
        _, val, test = seeded_split(n, seed)
        carved = {s: rows for s, rows in (("val", val), ("test", test)) if s in missing}
        for rows in carved.values():
            kept[rows] = False
    out = {"train": tuple(arrays[k][kept] for k in keys)}
    for split in ("val", "test"):
        if split in carved:
            out[split] = tuple(arrays[k][carved[split]] for k in keys)
        else:
            out[split] = tuple(arrays[f"{k}_{split}"] for k in keys)
    return out


def check_model_runs(model: nn.Module, x: Tensor, source: str) -> object:
    """The model's output on the first two examples of `x`.

    Raises:
        TaskError: the model does not run on them (inputs of the wrong shape or dtype), saying
            what the inputs are.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x[:2])
    except Exception as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TaskError(
            f"{source}: the model does not run on its inputs x (shape {tuple(x.shape)}, "
            f"{str(x.dtype).removeprefix('torch.')}): {type(error).__name__}: {first}; give "
            "inputs of the shape and dtype the model takes, batch first"
        ) from None
    finally:
        model.train(was_training)


class LabelledTask:
    """Classification on the user's labelled arrays: fine-tune on `(x, y)` batches, score
    accuracy.

    Args:
        splits: {"train", "val", "test"} → (x, y).
        name: how it is named ("data:/path/train.npz").
    """

    metric = "accuracy"
    distill = "kl"

    def __init__(self, splits: dict[str, tuple[Tensor, Tensor]], name: str = "data"):
        self.splits = splits
        self.name = name

    @classmethod
    def from_file(cls, path: str | Path, *, seed: int = 0, name: str | None = None):
        """The task of a data file with `x` and `y` (and perhaps the held-out splits).

        Raises:
            TaskError: the file is unusable, has no `y`, or its labels are not class labels.
        """
        arrays = read_arrays(path)
        for split in ("", "_val", "_test"):
            x, y = arrays.get(f"x{split}"), arrays.get(f"y{split}")
            if x is None and y is None:
                continue
            if y is None or x is None:
                missing = f"{'y' if y is None else 'x'}{split}"
                raise TaskError(
                    f"--data {path}: has x{split} or y{split} but not {missing}; labelled data "
                    "needs both (for inputs only, use --inputs FILE)"
                )
            if y.dtype.is_floating_point or y.dtype == torch.bool:
                raise TaskError(
                    f"--data {path}: y{split} holds {str(y.dtype).removeprefix('torch.')}, not "
                    "integer class labels; for a regression or embedding model use --inputs FILE"
                )
            if len(y) != len(x):
                raise TaskError(
                    f"--data {path}: x{split} has {len(x)} examples but y{split} {len(y)}"
                )
            _check_split_rows(x, f"x{split}", path)
            if not split and y.numel() and int(y.min()) == int(y.max()):
                raise TaskError(
                    f"--data {path}: y{split} holds one class only ({int(y.min())}), so accuracy "
                    "cannot tell plans apart; give labels of several classes, or use --inputs "
                    "FILE to score fidelity to the original model"
                )
        return cls(_splits(arrays, ("x", "y"), seed), name or f"data:{Path(path).resolve()}")

    def check_fits(self, model: nn.Module) -> None:
        """Check that the model runs on the inputs and that its outputs fit the labels.

        Raises:
            TaskError: inputs the model cannot take, or labels the outputs cannot score
                (another shape, or a class beyond the outputs' last dimension).
        """
        from engine.distill import output_of

        x, y = self.splits["train"]
        output = output_of(check_model_runs(model, x, self.name))
        labels = torch.cat([self.splits[s][1].reshape(-1) for s in self.splits])
        if output.ndim < 2 or tuple(output.shape[1:-1]) != tuple(y.shape[1:]):
            raise TaskError(
                f"{self.name}: the model's output {tuple(output.shape)} does not fit labels "
                f"{tuple(y.shape)}: give one class label per example (outputs (batch, classes)) "
                "or per position (outputs (batch, T, classes)); for other outputs use --inputs"
            )
        low, high, classes = int(labels.min()), int(labels.max()), output.shape[-1]
        if low < 0 or high >= classes:
            raise TaskError(
                f"{self.name}: labels run from {low} to {high} but the model outputs {classes} "
                f"classes; labels must be 0..{classes - 1}"
            )

    @property
    def spec(self) -> str:
        """Its task spec, which studies and exported files record (its name, when it came from
        a file: "data:/abs/train.npz")."""
        return self.name

    def train_batches(self, seed: int = 0, *, batch_size: int = _BATCH) -> DataLoader:
        """Shuffled `(x, y)` batches of the training split, the same order for the same seed."""
        generator = torch.Generator().manual_seed(seed)
        data = TensorDataset(*self.splits["train"])
        return DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator)

    def calibration(self) -> Tensor:
        return self.splits["train"][0][:_CALIBRATION]

    def score(self, model: nn.Module, split: str = "test") -> float:
        """Accuracy on "val" or "test"."""
        x, y = self.splits[split]
        return classification_accuracy(model, x, y)


class FidelityTask:
    """Inputs only: the student is scored against the original model's outputs on held-out
    inputs, and fine-tuned by distillation on the others.

    The original's outputs on the held-out splits are computed once, here, so the task holds
    tensors only (it travels to Ray workers without the model).

    Args:
        model: the original (uncompressed) model.
        inputs: {"train", "val", "test"} → x.
        name: how it is named ("inputs:/path/ids.npz").
        distill: the distillation loss ("kl", "mse", "cosine"); None: from the model's output
            (`engine.distill.infer_distill`). "kl" scores top-1 agreement, the others mean
            cosine similarity.
    """

    def __init__(
        self, model: nn.Module, inputs: dict[str, Tensor], name: str = "inputs", distill=None
    ):
        from engine.distill import DISTILL_LOSSES, infer_distill, output_of

        self.name = name
        self.inputs = inputs
        output = check_model_runs(model, inputs["train"], name)
        if distill is None:
            try:
                distill, self.why = infer_distill(output)
            except ValueError as error:
                raise TaskError(f"{name}: {error}") from None
        elif distill not in DISTILL_LOSSES:
            raise TaskError(f"distill {distill!r}: choose one of {', '.join(DISTILL_LOSSES)}")
        else:
            self.why = "as asked"
        if not output_of(output).dtype.is_floating_point:
            raise TaskError(f"{name}: the model's outputs are not floating point; nothing to score")
        self.distill = distill
        self.metric = "agreement" if distill == "kl" else "cosine"
        self.reference = {s: model_outputs(model, inputs[s]) for s in ("val", "test")}

    @classmethod
    def from_file(
        cls, model: nn.Module, path: str | Path, *, seed: int = 0, name=None, distill=None
    ):
        """The fidelity task on the inputs `x` of a data file (its `y`, if any, is ignored).

        Raises:
            TaskError: the file is unusable, or the model does not run on its inputs.
        """
        arrays = read_arrays(path, flag="--inputs")
        for split in ("x_val", "x_test"):
            if split in arrays:
                _check_split_rows(arrays[split], split, path)
        splits = {s: xs[0] for s, xs in _splits(arrays, ("x",), seed).items()}
        return cls(model, splits, name or f"inputs:{Path(path).resolve()}", distill)

    @property
    def spec(self) -> str:
        """Its task spec ("inputs:/abs/ids.npz" when it came from a file)."""
        return self.name

    def train_batches(self, seed: int = 0, *, batch_size: int = _BATCH) -> DataLoader:
        """Shuffled `(x,)` batches of the training inputs, the same order for the same seed."""
        generator = torch.Generator().manual_seed(seed)
        data = TensorDataset(self.inputs["train"])
        return DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator)

    def calibration(self) -> Tensor:
        return self.inputs["train"][:_CALIBRATION]

    def score(self, model: nn.Module, split: str = "test") -> float:
        """Agreement with, or cosine similarity to, the original's outputs on `split`."""
        outputs = model_outputs(model, self.inputs[split])
        reference = self.reference[split]
        if outputs.shape != reference.shape:
            raise TaskError(
                f"{self.name}: the model's outputs {tuple(outputs.shape)} differ in shape from "
                f"the original's {tuple(reference.shape)}"
            )
        if self.metric == "agreement":
            return top1_agreement(outputs, reference)
        return mean_cosine(outputs, reference)
