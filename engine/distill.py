"""Distillation losses that fit the model's output, and how to pick one.

"kl" (the KL divergence between softmaxes at temperature T, times T²) is for class logits; "mse"
for regression outputs; "cosine" (1 − cosine similarity along the last dimension) for embeddings
and hidden states, whose direction is what matters and which have no softmax. `infer_distill`
guesses from a teacher output; `output_of` finds the main tensor in what a model returns. The
fine-tuning loop (`engine.finetune`) uses them.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "DISTILL_LOSSES",
    "distill_loss",
    "infer_distill",
    "output_of",
    "warn_if_distill_misfits",
]

_log = logging.getLogger("compplan")

DISTILL_LOSSES = ("kl", "mse", "cosine")
"""The distillation losses :class:`FinetuneConfig` takes (see the module docstring)."""


def _main_key(output: dict) -> object | None:
    """Which entry of a dict output :func:`output_of` takes, or None if none is a tensor."""
    for key in ("logits", "last_hidden_state"):
        if isinstance(output.get(key), Tensor):
            return key
    return next((key for key, value in output.items() if isinstance(value, Tensor)), None)


def output_of(output: object) -> Tensor:
    """A model's main output tensor: the tensor itself; a dict's "logits" entry, else its
    "last_hidden_state", else its first tensor value (Hugging Face ``ModelOutput`` objects are
    dicts); the first tensor of a tuple or list.

    Raises:
        ValueError: If there is no tensor where one is looked for.
    """
    if isinstance(output, Tensor):
        return output
    if isinstance(output, dict):
        key = _main_key(output)
        if key is not None:
            return output[key]
    elif isinstance(output, list | tuple):
        for item in output:
            if isinstance(item, Tensor):
                return item
    raise ValueError(
        f"cannot find an output tensor in a model output of type {type(output).__name__}: "
        'expected a tensor, a dict with a tensor ("logits", "last_hidden_state", ...) or a '
        "tuple or list starting with one"
    )


_HIDDEN_KEYS = ("last_hidden_state", "pooler_output", "embeddings")


def infer_distill(output: object) -> tuple[str, str]:
    """The distillation loss that fits a teacher's output, and why, in a few words.

    A dict with "logits": "kl". A dict whose main tensor (:func:`output_of`) is hidden states or
    embeddings ("last_hidden_state", "pooler_output", "embeddings", a key containing "hidden" or
    "embed"): "cosine". Otherwise by the main tensor's shape: (batch, classes) with at least two
    classes: "kl", unless its rows have norm 1 and negative entries (normalized embeddings:
    "cosine"); (batch, 1), (batch,) or a scalar: "mse", a regression output; three dimensions or
    more: "cosine", hidden states with features on the last dimension.

    The choice is a guess from one output and can be overridden: ``FinetuneConfig.distill`` is
    what :func:`finetune` uses (a task's ``distill``, where it has one, is what callers pass).

    Args:
        output: What the teacher returned for a batch (a tensor, a dict, a tuple or list).

    Returns:
        ``(loss, reason)``: one of :data:`DISTILL_LOSSES`, and e.g. "class logits (batch,
        classes)".

    Raises:
        ValueError: If the output holds no tensor, its main tensor is not floating point
            (class indices, token ids: nothing to distill) or has no features.
    """
    tensor = output_of(output)
    if not tensor.is_floating_point():
        raise ValueError(
            f"the model's output is a tensor of {tensor.dtype}: integer outputs (class indices, "
            "token ids) cannot be distilled; return the logits or features they come from"
        )
    if isinstance(output, dict):
        key = _main_key(output)
        if key == "logits":
            return "kl", "class logits (a dict with 'logits')"
        name = str(key).lower()
        if key in _HIDDEN_KEYS or "hidden" in name or "embed" in name:
            return "cosine", f"hidden states or embeddings ({key!r})"
    if tensor.dim() <= 1:
        return "mse", "a regression output"
    if tensor.shape[-1] == 0:
        raise ValueError(f"the model's output has shape {tuple(tensor.shape)}: no features")
    if tensor.dim() == 2:
        if tensor.shape[-1] == 1:
            return "mse", "a regression output (batch, 1)"
        with torch.no_grad():
            norms = tensor.detach().float().norm(dim=-1)
            unit = bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-3))
            if unit and bool((tensor < 0).any()):
                return "cosine", "normalized embeddings (batch, features) of norm 1"
        return "kl", "class logits (batch, classes)"
    if tensor.dim() == 3:
        return "cosine", "hidden states (batch, tokens, features)"
    return "cosine", f"features on the last dimension of a {tensor.dim()}-D output"


def distill_loss(
    student: Tensor, teacher: Tensor, kind: str = "kl", *, temperature: float = 1.0
) -> Tensor:
    """The distillation loss ``kind`` (one of :data:`DISTILL_LOSSES`) of the student's output
    against the teacher's, both of the same shape; 0 when they are equal.

    "kl": the KL divergence from the teacher's softmax at ``temperature`` T to the student's over
    the last dimension (classes), averaged over positions (every other dimension), times T².
    "mse": the mean squared error over all elements. "cosine": the mean over positions of
    1 − the cosine similarity along the last dimension (blind to each vector's length).

    Raises:
        ValueError: If the shapes differ, ``kind`` is unknown, or "kl" is asked of an output
            with fewer than two entries on a last dimension after the batch (where it is
            always 0, or a softmax over the batch).
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"the student's output has shape {tuple(student.shape)} but the teacher's "
            f"{tuple(teacher.shape)}; distillation compares them entry by entry"
        )
    teacher = teacher.to(student.dtype)
    if kind == "kl":
        if student.dim() < 2 or student.shape[-1] < 2:
            raise ValueError(
                f"distill='kl' takes class logits on the last dimension, but the output has "
                f"shape {tuple(student.shape)}, over which a softmax is "
                + ("always 1" if student.dim() >= 2 else "across the batch")
                + "; use distill='mse' for a regression output"
            )
        t = temperature
        classes = student.shape[-1]
        divergence = F.kl_div(
            F.log_softmax(student.reshape(-1, classes) / t, dim=-1),
            F.log_softmax(teacher.reshape(-1, classes) / t, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        # T² keeps the gradient scale independent of T (Hinton et al.).
        return t * t * divergence
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind == "cosine":
        if student.dim() == 0:
            raise ValueError("distill='cosine' needs vectors, but the output is a scalar")
        features = student.shape[-1]
        similarity = F.cosine_similarity(
            student.reshape(-1, features), teacher.reshape(-1, features), dim=-1
        )
        return (1 - similarity).mean()
    raise ValueError(
        f"unknown distillation loss {kind!r}; choose one of {', '.join(map(repr, DISTILL_LOSSES))}"
    )


def warn_if_distill_misfits(teacher_output: object, distill: str) -> None:
    """Log a warning when "kl" is asked of an output that does not look like class logits."""
    # Only "kl" on something else: a softmax over 384 hidden features trains an encoder towards
    # a distribution it never had (cosine similarity 0.9997 → 0.861 in one epoch), and nothing
    # else would say so. MSE or cosine on logits is logit matching, a fine choice.
    if distill != "kl":
        return
    try:
        inferred, why = infer_distill(teacher_output)
    except ValueError:
        return  # the loss itself raises with the reason
    if inferred != "kl":
        _log.warning(
            "finetune: distilling with 'kl' (a softmax over the output's last dimension), but "
            "the teacher's output looks like %s, for which %r fits; set FinetuneConfig.distill "
            "(or the task's distill)",
            why,
            inferred,
        )
