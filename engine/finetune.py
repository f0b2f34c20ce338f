"""Fine-tuning a compressed student: distillation from its teacher, per-layer learning rates.

Contract:
    * :func:`finetune` trains ``student`` in place with Adam and a cosine schedule from
      ``config.lr`` to ``config.lr_min`` over all steps (PQF's recipe, 1e-3 → 1e-6). The loss is
      the KL divergence from the teacher's softmax at temperature T to the student's, times T²
      (T = 1 and no label smoothing, as in AdamBNN / N2UQ), plus ``config.ce_weight`` times the
      cross-entropy on labels when the batches carry labels. Without a teacher the loss is the
      weighted cross-entropy alone, which needs labels and ``ce_weight > 0``.
    * ``data`` is re-iterated every epoch and yields tensors ``x``, or ``(x,)`` / ``(x, y)``
      tuples or lists (what a ``DataLoader`` over a ``TensorDataset`` yields).
    * A plan's ``lr_mult`` sets each layer's learning rate (P-Transfer): the parameters under
      ``student.get_submodule(name)`` train at ``config.lr * lr_mult``; ``lr_mult == 0`` freezes
      them for the duration (``requires_grad`` is restored afterwards, also on errors). A
      parameter under two planned names (nested modules) follows the longer, innermost one; every
      other trainable parameter trains at ``config.lr``. Parameters that do not require grad
      beforehand are never trained (VQ codes, say, or anything the caller froze).
    * The teacher runs in eval mode under ``no_grad``; the training flag of each of its modules
      is restored afterwards. The student trains in train mode (BatchNorm running statistics
      update as usual), is in eval mode while ``on_epoch_end`` runs, and is left in eval mode.
    * ``on_epoch_end(epoch, student)`` (epochs count from 0) may return a dict of metrics, which
      is recorded, or raise :class:`StopFinetune` to end training early (Optuna pruning).
    * Given ``config.seed`` the result is deterministic for a fixed torch build and thread
      count: the global torch RNG is seeded (dropout, and a ``DataLoader`` without its own
      generator draw from it).
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

if TYPE_CHECKING:
    from search_spaces.plan import Plan

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "StopFinetune",
    "build_param_groups",
    "finetune",
]

_log = logging.getLogger("compplan")


class StopFinetune(Exception):
    """Raised by an ``on_epoch_end`` callback to end fine-tuning after the current epoch.

    Args:
        metrics: What to record for the epoch the callback stopped, since it cannot also return
            them (for example the accuracy that made an Optuna trial prune).
    """

    def __init__(self, message: str = "", *, metrics: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.metrics = dict(metrics) if metrics else {}


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning run.

    Attributes:
        epochs: Passes over ``data``; 0 trains nothing.
        lr: Adam's learning rate at the start, before any per-layer ``lr_mult``.
        lr_min: Learning rate the cosine schedule ends at; every layer's rate follows the same
            curve scaled by its ``lr_mult``, so their ratios hold throughout.
        weight_decay: Adam's (L2) weight decay; PQF and N2UQ fine-tune without it.
        temperature: Softmax temperature T of the distillation loss.
        ce_weight: Weight of the cross-entropy on labels, added to the distillation loss when the
            batches carry labels; the whole loss when there is no teacher.
        seed: Seed of the global torch RNG at the start.
        progress: Show a tqdm bar over epochs × batches on stderr with the running loss.
    """

    epochs: int = 3
    lr: float = 1e-3
    lr_min: float = 1e-6
    weight_decay: float = 0.0
    temperature: float = 1.0
    ce_weight: float = 0.0
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ValueError(f"FinetuneConfig.epochs={self.epochs!r} must be an integer ≥ 0")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"FinetuneConfig.lr={self.lr!r} must be a positive number")
        if not 0 <= self.lr_min <= self.lr:
            raise ValueError(f"FinetuneConfig.lr_min={self.lr_min!r} must be in [0, lr={self.lr}]")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"FinetuneConfig.weight_decay={self.weight_decay!r} must be ≥ 0")
        if not 0 < self.temperature < math.inf:
            raise ValueError(
                f"FinetuneConfig.temperature={self.temperature!r} must be a positive number"
            )
        if not 0 <= self.ce_weight < math.inf:
            raise ValueError(f"FinetuneConfig.ce_weight={self.ce_weight!r} must be ≥ 0")


@dataclass(frozen=True)
class FinetuneResult:
    """What a fine-tuning run did.

    Attributes:
        losses: Mean training loss per epoch (per sample, over the epoch's batches).
        metrics: What ``on_epoch_end`` returned for each epoch; empty dicts where it returned
            None or was not given. One entry per entry of ``losses``.
        stopped_early: Whether ``on_epoch_end`` raised :class:`StopFinetune`.
    """

    losses: tuple[float, ...]
    metrics: tuple[dict, ...]
    stopped_early: bool


# N2UQ trains its quantizers' own parameters (clip ranges, interval lengths) at a tenth of the
# weights' learning rate; faster, interval lengths collapse onto their floor and stop learning.
QUANTIZER_LR_FACTOR = 0.1


def _is_quantizer_param(param_name: str) -> bool:
    dotted = f".{param_name}"
    return ".act_quant." in dotted or ".quantizer." in dotted


def build_param_groups(student: nn.Module, plan: Plan | None, lr: float) -> list[dict[str, Any]]:
    """Optimizer parameter groups for the plan's per-layer learning-rate multipliers.

    Quantizer parameters (under ``act_quant`` or ``quantizer``) of a layer get their own group at
    ``QUANTIZER_LR_FACTOR`` times the layer's rate, as N2UQ trains them.

    Only parameters that require grad are placed; each in exactly one group. A parameter under
    several planned names (``"block"`` and ``"block.conv"``) goes to the longest. A parameter
    reachable under several names (tied weights) goes to the longest planned name among all of
    them.

    Args:
        student: The model to fine-tune.
        plan: Layer name → ``LayerPlan``; only ``lr_mult`` is read. None: one group.
        lr: The base learning rate.

    Returns:
        Dicts with ``params``, ``lr`` (``lr * lr_mult``), ``lr_mult`` and ``layer`` (the planned
        name, or None for the base group of parameters no planned layer holds, which comes
        first). Groups with ``lr_mult == 0`` are included, at lr 0, so callers can freeze them;
        groups without parameters are left out.

    Raises:
        ValueError: If the plan names a layer the student does not have.
    """
    layers = dict(plan.layers) if plan is not None else {}
    for name in layers:
        try:
            student.get_submodule(name)
        except AttributeError:
            raise ValueError(
                f"the plan names layer '{name}', which the student does not have; was the plan "
                "made for another model?"
            ) from None

    # By longest name first, so the first planned prefix that matches is the innermost one.
    by_depth = sorted(layers, key=len, reverse=True)

    def owner(param_name: str) -> str | None:
        for name in by_depth:
            if name == "" or param_name.startswith(name + "."):
                return name
        return None

    # remove_duplicate=False shows every alias of a tied parameter, so that the innermost rule
    # does not depend on which alias named_parameters() would have reported.
    owners: dict[int, tuple[nn.Parameter, str | None, bool]] = {}
    for param_name, param in student.named_parameters(remove_duplicate=False):
        if not param.requires_grad:
            continue
        layer = owner(param_name)
        seen = owners.get(id(param))
        if seen is None or (layer is not None and (seen[1] is None or len(layer) > len(seen[1]))):
            owners[id(param)] = (param, layer, _is_quantizer_param(param_name))

    members: dict[tuple[str | None, bool], list[nn.Parameter]] = {
        (name, quant): [] for name in [None, *layers] for quant in (False, True)
    }
    for param, layer, quant in owners.values():
        members[(layer, quant)].append(param)
    groups = []
    for (layer, quant), params in members.items():
        if not params:
            continue
        mult = 1.0 if layer is None else float(layers[layer].lr_mult)
        if quant:
            mult *= QUANTIZER_LR_FACTOR
        groups.append({"params": params, "lr": lr * mult, "lr_mult": mult, "layer": layer})
    return groups


def _split_batch(batch: object) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
        return batch[0], (batch[1] if len(batch) == 2 else None)
    raise ValueError(
        f"a batch must be an input tensor x, or a tuple (x,) or (x, y); got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
    )


def _count_batches(data: Iterable) -> int:
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        # An iterable without a length (an IterableDataset's loader, say): the cosine schedule
        # needs the number of steps in advance, and one extra pass is the only way to learn it.
        _log.debug("finetune: data has no len(); counting its batches with one extra pass")
        return sum(1 for _ in data)


def _device_of(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def logits_of(output: object) -> Tensor:
    """The logits in a model's output: the tensor itself, the first of a tuple or list, or a
    dict's "logits" entry (else its first tensor)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, dict):
        output = [output["logits"]] if "logits" in output else list(output.values())
    if isinstance(output, list | tuple):
        for item in output:
            if isinstance(item, Tensor):
                return item
    raise ValueError(f"cannot find logits in a model output of type {type(output).__name__}")


def _loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor | None,
    config: FinetuneConfig,
) -> Tensor:
    loss = student_logits.new_zeros(())
    if teacher_logits is not None:
        t = config.temperature
        # Classes are the last dimension: (B, C) and (B, T, C) both distil per position.
        classes = student_logits.shape[-1]
        # T² keeps the gradient scale independent of T (Hinton et al.).
        loss = loss + t * t * F.kl_div(
            F.log_softmax(student_logits.reshape(-1, classes) / t, dim=-1),
            F.log_softmax(teacher_logits.reshape(-1, classes) / t, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
    if labels is not None and config.ce_weight > 0:
        loss = loss + config.ce_weight * F.cross_entropy(student_logits, labels)
    return loss


def finetune(
    student: nn.Module,
    teacher: nn.Module | None,
    data: Iterable,
    plan: Plan | None = None,
    *,
    config: FinetuneConfig = FinetuneConfig(),
    on_epoch_end: Callable[[int, nn.Module], dict | None] | None = None,
) -> FinetuneResult:
    """Fine-tune ``student`` in place by distillation from ``teacher`` and/or labels.

    Args:
        student: The model to train, in place; left in eval mode.
        teacher: The uncompressed model to distill from, or None to train on labels alone
            (then ``config.ce_weight`` must be > 0 and every batch must carry labels).
        data: An iterable re-iterated every epoch (a list, a ``DataLoader``), yielding input
            tensors ``x`` or ``(x, y)`` pairs; batches are moved to the student's device. Data
            without ``len()`` is counted with one extra pass, for the schedule.
        plan: Per-layer learning-rate multipliers (``LayerPlan.lr_mult``); None trains every
            trainable parameter at ``config.lr``.
        config: Epochs, learning rates, loss weights, seed and progress bar.
        on_epoch_end: Called as ``on_epoch_end(epoch, student)`` after each epoch (from 0) with
            the student in eval mode; may return a dict of metrics to record, or raise
            :class:`StopFinetune` to stop.

    Returns:
        The mean loss and the callback's metrics per epoch, and whether training stopped early.

    Raises:
        ValueError: Without a teacher, if ``config.ce_weight`` is 0 or a batch has no labels; if
            ``data`` is a one-shot iterator or yields no batches or malformed ones; if the plan
            names a layer the student does not have.
        FloatingPointError: If the loss becomes NaN or infinite (lower ``config.lr``).
    """
    if teacher is None and config.ce_weight <= 0:
        raise ValueError(
            "finetune needs a teacher to distill from, or labelled batches with "
            "config.ce_weight > 0 to train on cross-entropy alone"
        )
    if teacher is student:
        raise ValueError(
            "the teacher is the student itself; pass a copy of the uncompressed model "
            "(copy.deepcopy before compressing) as the teacher"
        )
    if isinstance(data, Iterator):
        raise ValueError(
            "data is a one-shot iterator (a generator?) but is re-iterated every epoch; "
            "pass a list of batches or a DataLoader"
        )

    groups = build_param_groups(student, plan, config.lr)
    torch.manual_seed(config.seed)
    losses: list[float] = []
    metrics: list[dict] = []
    stopped_early = False
    if config.epochs == 0:
        student.eval()
        return FinetuneResult(losses=(), metrics=(), stopped_early=False)

    steps_per_epoch = _count_batches(data)
    if steps_per_epoch == 0:
        raise ValueError("data yielded no batches")
    total_steps = config.epochs * steps_per_epoch

    frozen = [p for g in groups if g["lr_mult"] == 0 for p in g["params"]]
    trainable = [g for g in groups if g["lr_mult"] > 0]
    # Each submodule's own mode, not one flag for all: teacher.train(True) at the end would also
    # switch on a BatchNorm the caller had kept in eval mode inside a teacher in train mode.
    teacher_modes = [(m, m.training) for m in teacher.modules()] if teacher is not None else []
    device = _device_of(student)
    bar = tqdm(
        total=total_steps,
        desc="fine-tuning",
        unit="batch",
        disable=not config.progress,
        file=sys.stderr,
    )
    try:
        for param in frozen:
            param.requires_grad_(False)
        optimizer = scheduler = None
        if trainable:
            optimizer = torch.optim.Adam(trainable, lr=config.lr, weight_decay=config.weight_decay)
            floor = config.lr_min / config.lr

            def cosine(step: int) -> float:
                # A factor on each group's own initial lr, so per-layer ratios hold to the end.
                progress = min(step, total_steps) / total_steps
                return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
        else:
            # Everything frozen: the passes still re-estimate BatchNorm statistics.
            _log.warning("finetune: no parameter is trainable; only BatchNorm statistics update")
        if teacher is not None:
            teacher.eval()

        for epoch in range(config.epochs):
            student.train()
            loss_sum, seen = 0.0, 0
            for batch in data:
                x, y = _split_batch(batch)
                if teacher is None and y is None:
                    raise ValueError(
                        "without a teacher, finetune trains on labels, but a batch has none; "
                        "yield (x, y) pairs or pass a teacher"
                    )
                x = x.to(device)
                y = y.to(device) if y is not None else None
                teacher_logits = None
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = logits_of(teacher(x)).to(device)
                with torch.set_grad_enabled(optimizer is not None):
                    loss = _loss(logits_of(student(x)), teacher_logits, y, config)
                value = loss.item()
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"fine-tuning loss is {value} in epoch {epoch}; lower config.lr "
                        f"(now {config.lr})"
                    )
                if optimizer is not None:
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                loss_sum += value * len(x)
                seen += len(x)
                bar.update()
                bar.set_postfix(epoch=epoch, loss=f"{loss_sum / seen:.4f}", refresh=False)
            losses.append(loss_sum / max(seen, 1))
            _log.debug("finetune: epoch %d mean loss %.5f", epoch, losses[-1])

            if on_epoch_end is None:
                metrics.append({})
                continue
            student.eval()
            try:
                returned = on_epoch_end(epoch, student)
            except StopFinetune as stop:
                metrics.append(stop.metrics)
                stopped_early = True
                _log.debug("finetune: stopped after epoch %d (%s)", epoch, stop)
                break
            metrics.append(dict(returned) if returned else {})
    finally:
        bar.close()
        for param in frozen:
            param.requires_grad_(True)
        for module, training in teacher_modes:
            module.training = training
        student.eval()
    return FinetuneResult(losses=tuple(losses), metrics=tuple(metrics), stopped_early=stopped_early)
