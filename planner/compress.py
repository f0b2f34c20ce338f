"""The whole compression of one model, as `compplan apply` runs it.

Load the model from its spec, keep a copy as the teacher, apply the plan, fine-tune the student by
distillation from the teacher (on the task's data, or on inputs synthesized from the teacher's
BatchNorm statistics when there is no task) with the loss that fits the output, keep the state the
task's validation score likes best (never worse than right after applying), export, and report
the task's score and bytes. In Python:

    from planner.compress import CompressionJob, evaluate_export
    result = CompressionJob("zoo:digits", plan_path="plan.json", out="digits.cpz").run()
    evaluate_export("digits.cpz")["score"]
    CompressionJob("mynet.py:build", "plan.json", "my.cpz", task="data:train.npz").run()
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
from engine.finetune import FinetuneConfig, default_lr, finetune, infer_distill
from engine.task import TaskError, distill_for
from engine.task_spec import (
    inputs_file_of,
    is_code_spec,
    load_with_task,
    portable_spec,
    resolve_task,
)
from predictors.size import size_report
from search_spaces.discover import discover
from search_spaces.model_spec import load_model
from search_spaces.output_file import check_output_path
from search_spaces.plan import Plan, validate_plan

__all__ = ["CompressionError", "CompressionJob", "evaluate_export"]

_BATCH = 64


class CompressionError(ValueError):
    """The job cannot run as asked (for example: no data and no BatchNorm to synthesize from)."""


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@dataclass(frozen=True)
class CompressionJob:
    """Apply a plan file to a model, fine-tune, export.

    Attributes:
        model_spec: "zoo:NAME" or "package.module:callable".
        plan_path: the plan file.
        out: where to write the compressed model.
        input_shape: example input shape (zoo models know their own; a data: or inputs: task
            gives example inputs of their own dtype).
        task: a task spec (`engine.task_spec`: "data:train.npz", "inputs:ids.npz",
            "file.py:make_task"); None: the model's zoo task, else data-free.
        distill: the distillation loss ("kl", "mse", "cosine"); None: the task's, else chosen
            from the model's output.
        epochs: fine-tune epochs; 0 skips fine-tuning.
        lr: base learning rate (per-layer multipliers come from the plan); None:
            `engine.finetune.default_lr` (1e-3, or 1e-4 for transformers).
        data_free: distill on synthesized inputs even when there is a task.
        synthetic_samples: how many inputs to synthesize when distilling without data.
        seed: seeds k-means, synthesis and fine-tuning.
        progress: progress bars on stderr.
    """

    model_spec: str
    plan_path: str | Path
    out: str | Path
    input_shape: str | tuple[int, ...] | None = None
    task: str | None = None
    distill: str | None = None
    epochs: int = 3
    lr: float | None = None
    data_free: bool = False
    synthetic_samples: int = 512
    seed: int = 0
    progress: bool = True

    def run(self) -> dict:
        """Do the job; returns the figures `compplan apply --json` prints.

        Keys: predicted_bytes, payload_bytes, file_bytes, extra_bytes, baseline_bytes,
        compression_ratio, task (its spec, or None), metric, score_before, score_applied and
        score_after (the task's test score uncompressed, compressed before fine-tuning, and
        compressed and fine-tuned; None without a task), data ("task",
        "synthetic" or "none"), epochs, lr, distill and distill_why (the loss and why; None when
        not fine-tuned), best_epoch (the epoch whose state was kept, 0: none improved on
        applying; None without validation data).
        """
        self._check_arguments()
        plan = Plan.load(self.plan_path)
        # Everything cheap is checked before anything slow (synthesis, k-means) runs.
        loaded, spec, task = load_with_task(
            self.model_spec,
            portable_spec(self.task) if self.task else None,
            input_shape=self.input_shape,
            distill=self.distill,
        )
        teacher = loaded.module.eval()
        validate_plan(plan, discover(teacher, loaded.example_inputs, model_name=self.model_spec))
        student = copy.deepcopy(teacher)
        needs_calibration = any(lp.act_bits < 32 for lp in plan.layers.values())
        data, calibration, source = self._data(
            teacher, task, loaded.example_inputs[0].shape, needs_calibration
        )
        score_before = task.score(teacher, "test") if task else None

        applied = apply_plan_(
            student,
            plan,
            calibration=calibration,
            example_inputs=loaded.example_inputs,
            config=ApplyConfig(seed=self.seed, progress=self.progress),
            model_name=self.model_spec,
        )
        score_applied = task.score(student, "test") if task else None
        tuned = self._finetune(student, teacher, task, data, plan, loaded.example_inputs[0])
        report = export(
            student,
            self.out,
            model_spec=portable_spec(self.model_spec),
            task=spec,
            distill=tuned["distill"],
        )
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
            "task": spec,
            "metric": getattr(task, "metric", None),
            "score_before": score_before,
            "score_applied": score_applied,
            "score_after": task.score(student, "test") if task else None,
            "data": source,
            "epochs": self.epochs,
            **tuned,
        }

    def _finetune(self, student, teacher, task, data, plan, example) -> dict:
        """Fine-tune `student` in place, keeping its best state by the task's validation score;
        returns lr, distill, distill_why and best_epoch."""
        if self.epochs == 0:
            return {"lr": None, "distill": None, "distill_why": None, "best_epoch": None}
        lr = self.lr if self.lr is not None else default_lr(teacher)
        if self.distill:
            distill, why = self.distill, "as asked"
        elif task is not None:
            distill, why = distill_for(task, teacher, example)
        else:
            with torch.no_grad():
                distill, why = infer_distill(teacher(example))
        config = FinetuneConfig(
            epochs=self.epochs,
            lr=lr,
            lr_min=lr * 1e-3,  # PQF's 1e-3 → 1e-6, for any base rate
            distill=distill,
            seed=self.seed,
            progress=self.progress,
        )
        score = (lambda model: task.score(model, "val")) if task is not None else None
        try:
            result = finetune(student, teacher, data, plan, config=config, score=score)
        except FloatingPointError:
            raise CompressionError(
                f"fine-tuning diverged (the loss is not finite); lower --lr (now {lr:g})"
            ) from None
        return {"lr": lr, "distill": distill, "distill_why": why, "best_epoch": result.best_epoch}

    def _check_arguments(self) -> None:
        if self.epochs < 0:
            raise CompressionError(f"--epochs must be 0 or more, not {self.epochs}")
        if self.lr is not None and not self.lr > 0:
            raise CompressionError(f"--lr must be a positive number, not {self.lr}")
        if self.synthetic_samples < 1:
            raise CompressionError(f"--synthetic must be at least 1, not {self.synthetic_samples}")
        check_output_path(self.out, "--out")  # before minutes of fine-tuning

    def _data(
        self, teacher: nn.Module, task, shape: torch.Size, needs_calibration: bool
    ) -> tuple[object, Tensor | None, str]:
        if task is not None and not self.data_free:
            return task.train_batches(self.seed), task.calibration(), "task"
        if not _has_batchnorm(teacher):
            if self.epochs > 0 or needs_calibration:
                why = "fine-tune" if self.epochs > 0 else "calibrate activation quantizers"
                fix = "pass --epochs 0" if self.epochs > 0 else "use act_bits 32 in the plan"
                raise CompressionError(
                    f"{self.model_spec} has no task data and no BatchNorm to synthesize inputs "
                    f"from, which it needs to {why}: give --task, --data or --inputs, or {fix}"
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


def _recorded_task(meta: dict) -> str | None:
    """The task spec a file records; files of before task specs record a zoo name ("digits")."""
    task = meta.get("task")
    if task and ":" not in task:
        return f"zoo:{task}"
    return task or None


def evaluate_export(
    path: str | Path,
    *,
    model_spec: str | None = None,
    task: str | None = None,
    trust_specs: bool = False,
    split: str = "test",
) -> dict:
    """Load a file written by `CompressionJob` (`compplan apply`), or its ONNX export (`.onnx`,
    run by onnxruntime), and score it on its task's `split`: the task given, else the one the
    file records.

    Args:
        path: the file.
        model_spec: the uncompressed model's spec, to rebuild the structure (and, for an inputs:
            task, the original to score against); None: the one the file records.
        task: a task spec; None: the file's.
        trust_specs: run the code a spec the file records names (a file.py:callable model or
            task); given ones are trusted.

    Returns:
        {"file", "task" (its spec), "metric", "split", "score"}.

    Raises:
        ExportError: the file is not an export, or records no task and none was given.
        TaskError: the task does not resolve, or may not run untrusted.
    """
    onnx = Path(path).suffix.lower() == ".onnx"
    if onnx:
        from engine.onnx_session import read_onnx_metadata

        meta = read_onnx_metadata(path)
    else:
        meta = read_metadata(path)
    spec = portable_spec(task) if task else _recorded_task(meta)
    if not spec:
        raise ExportError(
            f"{path} records no task to score it on: give --task SPEC, --data FILE or --inputs FILE"
        )
    trusted = trust_specs or task is not None
    if not trusted and is_code_spec(spec):
        raise TaskError(
            f"{path} records the task spec '{spec}', which imports and runs code; pass "
            "--trust-specs if you trust the file, or give the task (--task, --data, --inputs)"
        )
    recorded_model = meta.get("model_spec")
    structure_spec = model_spec or recorded_model
    trust_model = trust_specs or model_spec is not None
    original = None
    if spec.startswith("inputs:"):
        # Fidelity is scored against the original model, which the model spec builds.
        if not structure_spec:
            raise ExportError(f"{path} records no model spec; give --model SPEC (the original)")
        if not trust_model and not structure_spec.startswith("zoo:"):
            raise ExportError(
                f"{path} names the model spec {structure_spec!r}, which imports and runs code; "
                "pass --trust-specs if you trust the file, or give --model SPEC"
            )
        original = load_model(structure_spec, inputs=inputs_file_of(spec)).module
    resolved = resolve_task(spec, original, trusted=True, distill=meta.get("distill"))
    if onnx:
        from engine.onnx_session import onnx_session
        from planner.onnx_job import onnx_structure_check

        if model_spec is not None:
            onnx_structure_check(path, meta, model_spec)
        compressed = onnx_session(path).module()
    else:
        structure = None
        if model_spec is not None:
            structure = load_model(
                model_spec, input_shape=meta.get("input_shape"), pretrained=False
            ).module
        compressed = load(path, model=structure, trust_model_spec=trust_specs)
    return {
        "file": str(path),
        "task": spec,
        "metric": resolved.metric,
        "split": split,
        "score": resolved.score(compressed, split),
    }
