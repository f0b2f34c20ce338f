"""The compression engine: apply a plan, fine-tune, export, load.

    from engine import apply_plan_, finetune, export, load
    applied = apply_plan_(model, plan, calibration=batch)   # prune, quantize, in place
    finetune(model, teacher, loader, plan)                   # distillation, per-layer LRs
    report = export(model, "model.cpz", model_spec="zoo:digits")
    same = load("model.cpz")

The engine orchestrates; each compression kind is a unit in `search_spaces.methods` (LR²VQ / PQ,
b-bit and 1-bit weights, N2UQ activations) whose hooks it calls. It owns channel pruning
(`engine.pruning`), PQF's permutation (`engine.permute`),
data-free calibration (`engine.datafree`), BatchNorm re-estimation (`engine.calibrate`), and the
deployed form that latency is measured on (`engine.deploy`).
"""

from engine.apply import AppliedPlan, ApplyConfig, apply_plan_
from engine.datafree import synthesize_batches
from engine.deploy import deployed
from engine.export import ExportError, ExportReport, export, freeze_, load
from engine.finetune import FinetuneConfig, FinetuneResult, StopFinetune, finetune

__all__ = [
    "AppliedPlan",
    "ApplyConfig",
    "ExportError",
    "ExportReport",
    "FinetuneConfig",
    "FinetuneResult",
    "StopFinetune",
    "apply_plan_",
    "deployed",
    "export",
    "finetune",
    "freeze_",
    "load",
    "synthesize_batches",
]
