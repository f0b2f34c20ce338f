"""The whole compression of one model, as `compplan apply` runs it.

Load the model from its spec, keep a copy as the teacher, apply the plan, fine-tune the student by
distillation from the teacher (on the task's data, or on inputs synthesized from the teacher's
BatchNorm statistics when there is no data), export, and report accuracy and bytes. In Python:

    from planner.compress import CompressionJob, evaluate_export
    result = CompressionJob("zoo:digits", plan_path="plan.json", out="digits.cpz").run()
    evaluate_export("digits.cpz")["accuracy"]
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from engine.apply import ApplyConfig, apply_plan_
from engine.datafree import synthesize_batches
from engine.export import ExportError, export, load, read_metadata
from engine.finetune import FinetuneConfig, finetune
from predictors.size import size_report
from search_spaces.discover import discover
from search_spaces.model_spec import load_model
from search_spaces.plan import Plan, validate_plan

__all__ = ["CompressionError", "CompressionJob", "evaluate_export"]

_BATCH = 64


class CompressionError(ValueError):
    """The job cannot run as asked (for example: no data and no BatchNorm to synthesize from)."""


def _portable(spec: str) -> str:
    """A file-path spec made absolute, so that the exported file loads from any folder."""
    where, sep, attr = spec.rpartition(":")
    if sep and where.endswith(".py"):
        return f"{Path(where).resolve()}:{attr}"
    return spec


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@dataclass(frozen=True)
class CompressionJob:
    """Apply a plan file to a model, fine-tune, export.

    Attributes:
        model_spec: "zoo:NAME" or "package.module:callable".
        plan_path: the plan file.
        out: where to write the compressed model.
        input_shape: example input shape (zoo models know their own).
        epochs: fine-tune epochs; 0 skips fine-tuning.
        lr: base learning rate (per-layer multipliers come from the plan).
        data_free: distill on synthesized inputs even when the model's task has data.
        synthetic_samples: how many inputs to synthesize when distilling without data.
        seed: seeds k-means, synthesis and fine-tuning.
        progress: progress bars on stderr.
    """

    model_spec: str
    plan_path: str | Path
    out: str | Path
    input_shape: str | tuple[int, ...] | None = None
    epochs: int = 3
    lr: float = 1e-3
    data_free: bool = False
    synthetic_samples: int = 512
    seed: int = 0
    progress: bool = True

    def run(self) -> dict:
        """Do the job; returns the figures `compplan apply --json` prints.

        Keys: predicted_bytes, payload_bytes, file_bytes, extra_bytes, baseline_bytes,
        compression_ratio, accuracy_before, accuracy_after (None without a task), data
        ("task" or "synthetic"), epochs.
        """
        from zoo.tasks import get_task

        self._check_arguments()
        plan = Plan.load(self.plan_path)
        loaded = load_model(self.model_spec, input_shape=self.input_shape)
        teacher = loaded.module.eval()
        # Everything cheap is checked before anything slow (synthesis, k-means) runs.
        validate_plan(plan, discover(teacher, loaded.example_inputs, model_name=self.model_spec))
        student = copy.deepcopy(teacher)
        task = get_task(loaded.task, seed=0) if loaded.task else None
        needs_calibration = any(lp.act_bits < 32 for lp in plan.layers.values())
        data, calibration, source = self._data(
            teacher, task, loaded.example_inputs[0].shape, needs_calibration
        )
        accuracy_before = task.accuracy(teacher) if task else None

        applied = apply_plan_(
            student,
            plan,
            calibration=calibration,
            example_inputs=loaded.example_inputs,
            config=ApplyConfig(seed=self.seed, progress=self.progress),
            model_name=self.model_spec,
        )
        if self.epochs > 0:
            config = FinetuneConfig(
                epochs=self.epochs,
                lr=self.lr,
                lr_min=self.lr * 1e-3,  # PQF's 1e-3 → 1e-6, for any base rate
                seed=self.seed,
                progress=self.progress,
            )
            try:
                finetune(student, teacher, data, plan, config=config)
            except FloatingPointError:
                raise CompressionError(
                    f"fine-tuning diverged (the loss is not finite); lower --lr (now {self.lr})"
                ) from None
        report = export(student, self.out, model_spec=_portable(self.model_spec), task=loaded.task)
        accuracy_after = task.accuracy(student) if task else None
        baseline = applied.graph.baseline_bits / 8
        predicted = size_report(plan, applied.graph).total_bits / 8
        return {
            "model": self.model_spec,
            "predicted_bytes": predicted,
            "payload_bytes": report.payload_bytes,
            "extra_bytes": report.extra_bytes,
            "file_bytes": report.file_bytes,
            "baseline_bytes": baseline,
            "compression_ratio": baseline / predicted,
            "accuracy_before": accuracy_before,
            "accuracy_after": accuracy_after,
            "data": source,
            "epochs": self.epochs,
        }

    def _check_arguments(self) -> None:
        if self.epochs < 0:
            raise CompressionError(f"--epochs must be 0 or more, not {self.epochs}")
        if not self.lr > 0:
            raise CompressionError(f"--lr must be a positive number, not {self.lr}")
        if self.synthetic_samples < 1:
            raise CompressionError(f"--synthetic must be at least 1, not {self.synthetic_samples}")
        out = Path(self.out)
        if out.is_dir() or not out.parent.is_dir():
            where = "is a directory" if out.is_dir() else "is in a folder that does not exist"
            raise CompressionError(f"--out {out} {where}; give a file path in an existing folder")

    def _data(
        self, teacher: nn.Module, task, shape: torch.Size, needs_calibration: bool
    ) -> tuple[object, Tensor | None, str]:
        if task is not None and not self.data_free:
            return task.train_loader(batch_size=_BATCH, seed=self.seed), task.calibration(), "task"
        if not _has_batchnorm(teacher):
            if self.epochs > 0 or needs_calibration:
                why = "fine-tune" if self.epochs > 0 else "calibrate activation quantizers"
                fix = "pass --epochs 0" if self.epochs > 0 else "use act_bits 32 in the plan"
                raise CompressionError(
                    f"{self.model_spec} has no task data and no BatchNorm to synthesize inputs "
                    f"from, which it needs to {why}; {fix}"
                )
            return [], None, "none"
        synthetic = synthesize_batches(
            teacher,
            tuple(shape),
            n_samples=self.synthetic_samples,
            batch_size=_BATCH,
            seed=self.seed,
            progress=self.progress,
        )
        batches = list(torch.split(synthetic, _BATCH))
        return batches, synthetic[:256], "synthetic"


def evaluate_export(path: str | Path) -> dict:
    """Load a file written by `CompressionJob` (`compplan apply`) and score it on the test data of
    the zoo task it records; returns {"file", "task", "accuracy"}.

    Raises:
        ExportError: the file is not an export, records no task, or an unknown one.
    """
    from zoo.tasks import get_task

    meta = read_metadata(path)
    if not meta.get("task"):
        raise ExportError(
            f"{path} records no task to evaluate on; compplan eval scores zoo task models "
            "(load it in Python with engine.load and evaluate it yourself)"
        )
    try:
        task = get_task(meta["task"])
    except ValueError as error:
        raise ExportError(f"{path}: {error}") from None
    return {"file": str(path), "task": meta["task"], "accuracy": task.accuracy(load(path), "test")}
