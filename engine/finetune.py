"""Fine-tuning a compressed student: distillation from its teacher, per-layer learning rates.

Contract:
    * :func:`finetune` trains ``student`` in place with Adam and a cosine schedule from
      ``config.lr`` to ``config.lr_min`` over all steps (PQF's recipe, 1e-3 → 1e-6; for
      transformer-like models :func:`default_lr` says 1e-4). The loss is ``config.distill``
      between the student's and the teacher's main output (:func:`output_of`), plus
      ``config.ce_weight`` times the cross-entropy on labels when the batches carry labels.
      Without a teacher the loss is the weighted cross-entropy alone, which needs labels and
      ``ce_weight > 0``.
    * Distillation losses (:data:`DISTILL_LOSSES`, :func:`distill_loss`): "kl", the KL divergence
      from the teacher's softmax at temperature T to the student's over the last dimension, times
      T² (T = 1 and no label smoothing, as in AdamBNN / N2UQ): for class logits, (B, C) or per
      position (B, T, C); "mse", the mean squared error over all elements: for regression outputs;
      "cosine", the mean over positions (every dimension but the last) of 1 − the cosine
      similarity along the last dimension: for embeddings and hidden states, whose direction is
      what matters and which have no softmax. "kl" is the default; :func:`infer_distill` picks
      one from a teacher output, and ``finetune`` logs a warning when "kl" is used on an output
      that does not look like class logits (KL on hidden states makes a good encoder worse).
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
      update as usual), is in eval mode while ``score`` and ``on_epoch_end`` run, and is left in
      eval mode.
    * Keeping the best: given ``score(student) -> float`` (higher is better), the student is
      scored before training and after every epoch (before ``on_epoch_end``). A copy of the
      state_dict of the best scored state (parameters and buffers: BatchNorm statistics,
      quantizer state; kept on the model's device), the earliest among equals, is loaded back at
      the end, also when ``on_epoch_end`` raises :class:`StopFinetune`. So fine-tuning never
      returns a student scored worse than the one it was given. On any other exception the
      student is left as training left it.
    * ``on_epoch_end(epoch, student)`` (epochs count from 0) may return a dict of metrics, which
      is recorded, or raise :class:`StopFinetune` to end training early (Optuna pruning).
    * Given ``config.seed`` the result is deterministic for a fixed torch build and thread
      count: the global torch RNG is seeded (dropout, and a ``DataLoader`` without its own
      generator draw from it), after the score before training.
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

from engine.distill import (
    DISTILL_LOSSES,
    distill_loss,
    infer_distill,
    output_of,
    warn_if_distill_misfits,
)

if TYPE_CHECKING:
    from search_spaces.plan import Plan

__all__ = [
    "DISTILL_LOSSES",
    "FinetuneConfig",
    "FinetuneResult",
    "StopFinetune",
    "build_param_groups",
    "default_lr",
    "distill_loss",
    "finetune",
    "infer_distill",
    "output_of",
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
        lr: Adam's learning rate at the start, before any per-layer ``lr_mult``. The default
            suits conv nets trained from scratch or compressed; :func:`default_lr` gives one
            that suits a given model (1e-4 for transformer-like ones).
        lr_min: Learning rate the cosine schedule ends at; every layer's rate follows the same
            curve scaled by its ``lr_mult``, so their ratios hold throughout.
        weight_decay: Adam's (L2) weight decay; PQF and N2UQ fine-tune without it.
        temperature: Softmax temperature T of the "kl" distillation loss (unused by the others).
        ce_weight: Weight of the cross-entropy on labels, added to the distillation loss when the
            batches carry labels; the whole loss when there is no teacher. Only meaningful with
            class logits.
        distill: The distillation loss, one of :data:`DISTILL_LOSSES`: "kl" for class logits,
            "mse" for regression outputs, "cosine" for embeddings and hidden states.
            :func:`infer_distill` chooses one from a teacher output.
        seed: Seed of the global torch RNG at the start.
        progress: Show a tqdm bar over epochs × batches on stderr with the running loss.
    """

    epochs: int = 3
    lr: float = 1e-3
    lr_min: float = 1e-6
    weight_decay: float = 0.0
    temperature: float = 1.0
    ce_weight: float = 0.0
    distill: str = "kl"
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
        if self.distill not in DISTILL_LOSSES:
            raise ValueError(
                f"FinetuneConfig.distill={self.distill!r} must be one of "
                f"{', '.join(map(repr, DISTILL_LOSSES))} (kl: class logits; mse: regression "
                "outputs; cosine: embeddings and hidden states)"
            )


@dataclass(frozen=True)
class FinetuneResult:
    """What a fine-tuning run did.

    Attributes:
        losses: Mean training loss per epoch (per sample, over the epoch's batches).
        metrics: What ``on_epoch_end`` returned for each epoch; empty dicts where it returned
            None or was not given. One entry per entry of ``losses``.
        stopped_early: Whether ``on_epoch_end`` raised :class:`StopFinetune`.
        scores: What ``score`` said before training, then after each epoch run (one more entry
            than ``losses``); empty without ``score``.
        best_epoch: Which scored state the student was left in: 0 for the state before
            training, e for the state after epoch e (counting from 1); None without ``score``.
    """

    losses: tuple[float, ...]
    metrics: tuple[dict, ...]
    stopped_early: bool
    scores: tuple[float, ...] = ()
    best_epoch: int | None = None


def default_lr(model: nn.Module) -> float:
    """A starting learning rate for fine-tuning ``model`` with Adam.

    1e-4 for transformer-like models, those holding an ``nn.LayerNorm``, ``nn.RMSNorm``,
    ``nn.MultiheadAttention``, ``nn.Embedding``, ``nn.TransformerEncoderLayer`` or
    ``nn.TransformerDecoderLayer`` (Hugging Face models are built of these): they usually come
    pretrained and close to the optimum, and Adam at 1e-3 moves their weights far out of it in a
    few steps (BERT-style models are fine-tuned at 1e-5 to 1e-4). Else 1e-3, PQF's rate for conv
    nets, whose BatchNorm keeps them stable at that rate.
    """
    kinds = [
        nn.LayerNorm,
        nn.MultiheadAttention,
        nn.Embedding,
        nn.TransformerEncoderLayer,
        nn.TransformerDecoderLayer,
    ]
    if hasattr(nn, "RMSNorm"):
        kinds.append(nn.RMSNorm)
    if any(isinstance(module, tuple(kinds)) for module in model.modules()):
        return 1e-4
    return 1e-3


# N2UQ trains its quantizers' own parameters (clip ranges, interval lengths) at a tenth of the
# weights' learning rate; faster, interval lengths collapse onto their floor and stop learning.
QUANTIZER_LR_FACTOR = 0.1


def _is_quantizer_param(param_name: str) -> bool:
    dotted = f".{param_name}"
    return any(part in dotted for part in (".act_quant.", ".out_quant.", ".quantizer."))


def build_param_groups(student: nn.Module, plan: Plan | None, lr: float) -> list[dict[str, Any]]:
    """Optimizer parameter groups for the plan's per-layer learning-rate multipliers.

    Quantizer parameters (under ``act_quant``, ``out_quant`` or ``quantizer``) of a layer get
    their own group at ``QUANTIZER_LR_FACTOR`` times the layer's rate, as N2UQ trains them.

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


def _loss(
    student_out: Tensor,
    teacher_out: Tensor | None,
    labels: Tensor | None,
    config: FinetuneConfig,
) -> Tensor:
    loss = student_out.new_zeros(())
    if teacher_out is not None:
        loss = loss + distill_loss(
            student_out, teacher_out, config.distill, temperature=config.temperature
        )
    if labels is not None and config.ce_weight > 0:
        loss = loss + config.ce_weight * F.cross_entropy(student_out, labels)
    return loss


def _better(value: float, best: float) -> bool:
    """Whether ``value`` beats ``best``; NaN is worse than any number, and ties do not beat."""
    if math.isnan(value):
        return False
    return math.isnan(best) or value > best


def _snapshot(module: nn.Module) -> dict[str, Tensor]:
    # state_dict holds the persistent buffers too (BatchNorm statistics, quantizer state), and
    # load_state_dict copies into the tensors in place, frozen ones included.
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def finetune(
    student: nn.Module,
    teacher: nn.Module | None,
    data: Iterable,
    plan: Plan | None = None,
    *,
    config: FinetuneConfig = FinetuneConfig(),
    on_epoch_end: Callable[[int, nn.Module], dict | None] | None = None,
    score: Callable[[nn.Module], float] | None = None,
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
        config: Epochs, learning rates, the distillation loss, loss weights, seed and progress
            bar.
        on_epoch_end: Called as ``on_epoch_end(epoch, student)`` after each epoch (from 0) with
            the student in eval mode; may return a dict of metrics to record, or raise
            :class:`StopFinetune` to stop.
        score: ``score(student) -> float``, higher is better, called with the student in eval
            mode before training and after each epoch (before ``on_epoch_end``). Given, the
            student ends in the best scored state (the earliest of equals; the one it came in
            if training never beat it), also after :class:`StopFinetune`.

    Returns:
        The mean loss and the callback's metrics per epoch, whether training stopped early, and
        the scores and which of them the student was left at.

    Raises:
        ValueError: Without a teacher, if ``config.ce_weight`` is 0 or a batch has no labels; if
            ``data`` is a one-shot iterator or yields no batches or malformed ones; if the plan
            names a layer the student does not have; if the student's and the teacher's outputs
            differ in shape or do not fit ``config.distill``.
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
    scores: list[float] = []
    best: dict[str, Any] = {"epoch": None, "state": None}

    def record_score(epoch: int) -> None:
        # epoch: 0 before training, e after epoch e (from 1).
        student.eval()
        value = float(score(student))  # type: ignore[misc]
        scores.append(value)
        _log.debug("finetune: score %.5f %s", value, f"after epoch {epoch}" if epoch else "before")
        if best["epoch"] is None or _better(value, scores[best["epoch"]]):
            best["epoch"] = epoch
            # After the last epoch the student already is that state: no copy needed.
            best["state"] = _snapshot(student) if epoch < config.epochs else None

    if score is not None:
        record_score(0)
    torch.manual_seed(config.seed)
    losses: list[float] = []
    metrics: list[dict] = []
    stopped_early = False
    if config.epochs == 0:
        student.eval()
        return FinetuneResult(
            losses=(),
            metrics=(),
            stopped_early=False,
            scores=tuple(scores),
            best_epoch=best["epoch"],
        )

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

        checked_distill = False
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
                teacher_out = None
                if teacher is not None:
                    with torch.no_grad():
                        teacher_output = teacher(x)
                    if not checked_distill:
                        checked_distill = True
                        warn_if_distill_misfits(teacher_output, config.distill)
                    teacher_out = output_of(teacher_output).to(device)
                with torch.set_grad_enabled(optimizer is not None):
                    loss = _loss(output_of(student(x)), teacher_out, y, config)
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

            if score is not None:
                record_score(epoch + 1)
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

    # Reached only without an exception (StopFinetune included): on errors the student stays as
    # training left it, for the caller to inspect.
    if score is not None and best["epoch"] != len(scores) - 1:
        student.load_state_dict(best["state"])
        if best["epoch"] == 0:
            _log.info(
                "finetune: no epoch beat the score before training (%.5f); the student is left "
                "as it came",
                scores[0],
            )
        else:
            _log.debug(
                "finetune: kept the state after epoch %d (score %.5f)",
                best["epoch"],
                scores[best["epoch"]],
            )
    return FinetuneResult(
        losses=tuple(losses),
        metrics=tuple(metrics),
        stopped_early=stopped_early,
        scores=tuple(scores),
        best_epoch=best["epoch"],
    )
