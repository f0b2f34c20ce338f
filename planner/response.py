"""Each layer's measured response: how far the model's output moves for a given weight error.

The proxy prices an option of layer l by `response_l(e)`, where e is the option's relative weight
error ‖Ŵ − W‖²/‖W‖². The response is measured, not assumed: the layer's weight is replaced by a
few real reconstructions (its cheapest options to compute, `WeightMethod.probe_weight`; Gaussian
noise of the same energy where none has one), BatchNorm is re-estimated on the calibration inputs
as `apply` does, and the output's distortion from the unchanged model's is measured with the
loss the model's output calls for (KL for logits, 1 − cosine for embeddings, relative MSE
otherwise). Between probes the response is a straight line in log–log (a power law per segment),
beyond them the nearest segment continued. One forward pass per probe, three probes a layer at
most.

Why: a linear sensitivity to small Gaussian noise ranks small errors well, but a layer's output
distortion grows faster than linearly in its error once the error is large (and BatchNorm
re-estimation hides part of a small one), so a linear proxy spends 16 bits on a stem and 1 bit
on large layers that then dominate the output's error (`scripts/bench_proxy.py`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from engine.distill import output_of

__all__ = [
    "LayerResponse",
    "OutputDistortion",
    "ResponseMeter",
    "gaussian_noise",
    "noise_levels",
    "pick_probes",
]

# Errors below this are not probed: their distortion is at the measurement's noise.
_SMALLEST_PROBED_ERROR = 1e-4
_MAX_PROBES = 3
# A segment's slope in log–log is kept in this range, so that measurement noise between two close
# probes cannot make a response fall with the error or jump by orders of magnitude.
_SLOPES = (0.5, 3.0)
# BatchNorm is re-estimated for a probe (as `apply` does) from this many calibration examples up.
_MIN_REESTIMATE_EXAMPLES = 16
# A response is measured on at most this many examples of each calibration batch: on zoo:mnist1d
# and zoo:digits the proxy ranked plans, and chose them, as it did with 256, in half the time.
MAX_EXAMPLES = 128
_TINY = 1e-12

Inputs = Tensor | tuple[Tensor, ...]


@dataclass(frozen=True)
class LayerResponse:
    """A layer's output distortion as a function of its relative weight error.

    Attributes:
        errors: the probed relative errors, ascending (at least one).
        distortions: the measured distortion at each (above 0).
    """

    errors: tuple[float, ...]
    distortions: tuple[float, ...]

    @classmethod
    def linear(cls, slope: float) -> LayerResponse:
        """A response proportional to the error (`slope` per unit): the noise sensitivity's."""
        return cls((1.0,), (max(float(slope), _TINY),))

    def __call__(self, errors: np.ndarray | float) -> np.ndarray:
        """The distortion at each relative error (0 at 0; monotone increasing)."""
        e = np.asarray(errors, dtype=np.float64)
        x = np.log(np.maximum(e, 1e-300))
        xs, ys = np.log(self.errors), np.log(self.distortions)
        if len(xs) == 1:
            y = ys[0] + (x - xs[0])
        else:
            slopes = np.clip(np.diff(ys) / np.maximum(np.diff(xs), 1e-12), *_SLOPES)
            segment = np.clip(np.searchsorted(xs, x) - 1, 0, len(slopes) - 1)
            # Each segment starts where the previous one ends, so the curve is continuous.
            starts = np.concatenate([[ys[0]], ys[0] + np.cumsum(slopes * np.diff(xs))])
            y = starts[segment] + slopes[segment] * (x - xs[segment])
        return np.where(e > 0, np.exp(y), 0.0)


class OutputDistortion:
    """The distance of a model's outputs from the original's on fixed inputs.

    `kind`: "kl" (mean KL from the original's softmax, over every position), "cosine" (mean
    1 − cosine along the last dimension) or "mse" (mean squared error relative to the original
    output's mean square, so that it is scale-free).
    """

    def __init__(self, model: nn.Module, inputs: Sequence[Inputs], kind: str):
        if kind not in ("kl", "cosine", "mse"):
            raise ValueError(f"unknown distortion {kind!r}; choose kl, cosine or mse")
        self.model, self.inputs, self.kind = model, list(inputs), kind
        self.reference = self.outputs()

    def outputs(self) -> list[Tensor]:
        """The model's main outputs on the inputs, now (float64)."""
        with torch.no_grad():
            return [
                output_of(self.model(*b) if isinstance(b, tuple) else self.model(b)).double()
                for b in self.inputs
            ]

    def __call__(self) -> float:
        """The model's distortion now (its weights as they are)."""
        return self.between(self.outputs(), self.reference)

    def between(self, outputs: Sequence[Tensor], reference: Sequence[Tensor]) -> float:
        """The distortion of `outputs` from `reference` (both as `outputs()` returns them)."""
        total, count = 0.0, 0
        for out, ref in zip(outputs, reference, strict=True):
            n = out.shape[0] if out.dim() else 1
            if self.kind == "kl":
                classes = out.shape[-1]
                d = F.kl_div(
                    F.log_softmax(out.reshape(-1, classes), -1),
                    F.log_softmax(ref.reshape(-1, classes), -1),
                    log_target=True,
                    reduction="batchmean",
                )
            elif self.kind == "cosine":
                features = out.shape[-1]
                d = (
                    1 - F.cosine_similarity(out.reshape(-1, features), ref.reshape(-1, features))
                ).mean()
            else:
                d = (out - ref).square().mean() / ref.square().mean().clamp_min(1e-30)
            total, count = total + float(d) * n, count + n
        return total / max(count, 1)


def pick_probes(errors: np.ndarray, probeable: np.ndarray) -> list[int]:
    """Which options to probe: up to three of those with a reconstruction (`probeable`), spread
    over the error range in log: the largest error, the smallest above the noise floor, and the
    one nearest their geometric mean. Indices into `errors`, distinct."""
    candidates = [i for i in range(len(errors)) if probeable[i] and errors[i] > 0]
    if not candidates:
        return []
    above = [i for i in candidates if errors[i] >= _SMALLEST_PROBED_ERROR]
    if not above:
        return [max(candidates, key=lambda i: errors[i])]
    coarsest = max(above, key=lambda i: errors[i])
    finest = min(above, key=lambda i: errors[i])
    middle = math.sqrt(errors[coarsest] * errors[finest])
    mid = min(above, key=lambda i: abs(math.log(errors[i] / middle)))
    return list(dict.fromkeys([coarsest, mid, finest]))[:_MAX_PROBES]


def noise_levels(errors: np.ndarray) -> list[float]:
    """Relative noise energies to probe a layer with no reconstructable option: its options'
    largest error, the smallest above the floor and their geometric mean (0.1, 0.01, 0.001
    where it has no option with an error: then only activations or pruning are priced)."""
    above = sorted({float(e) for e in errors if e >= _SMALLEST_PROBED_ERROR})
    if not above:
        return [1e-1, 1e-2, 1e-3]
    levels = {above[-1], above[0], math.sqrt(above[-1] * above[0])}
    return sorted(levels, reverse=True)


class ResponseMeter:
    """Measures layer responses on fixed calibration inputs.

    Args:
        model: the original model; each probe changes one layer's weight and puts it back
            (and BatchNorm's statistics), so the model is exactly as it was between probes.
        calibration: input batches the distortion is measured on (tensors, or tuples for
            several inputs; the first `MAX_EXAMPLES` examples of each).
        kind: the distortion ("kl", "cosine", "mse"; see `OutputDistortion`).
        reestimate_batchnorm: re-estimate BatchNorm for each probe, as `apply` does: where the
            model has BatchNorm and every batch is a tensor of at least 16 examples, each batch
            is normalized by its own statistics (what re-estimating on it gives, in one forward
            pass instead of two), and probes are measured against the unchanged model
            normalized the same way rather than against the original, since re-estimation's own
            shift is in every plan alike and subtracting it from a small probe's distortion would
            leave noise.
    """

    def __init__(
        self,
        model: nn.Module,
        calibration: Sequence[Inputs],
        *,
        kind: str,
        reestimate_batchnorm: bool = True,
    ):
        self.model = model.eval()
        calibration = [_first(batch, MAX_EXAMPLES) for batch in calibration]
        self.distortion = OutputDistortion(self.model, calibration, kind)
        self.norms = [
            m
            for m in self.model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]
        self._saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in self.norms]
        self.reestimates = (
            reestimate_batchnorm
            and bool(self.norms)
            and all(
                isinstance(b, Tensor) and len(b) >= _MIN_REESTIMATE_EXAMPLES for b in calibration
            )
        )
        self.probes = 0
        with self._reestimated():
            self.distortion.reference = self.distortion.outputs()

    @property
    def facts(self) -> dict[str, object]:
        """The distortion kind, whether BatchNorm was re-estimated, how many probes ran."""
        return {
            "distortion": self.distortion.kind,
            "batchnorm_reestimated": self.reestimates,
            "probes": self.probes,
        }

    @contextlib.contextmanager
    def _reestimated(self):
        if not self.reestimates:
            yield
            return
        for norm in self.norms:
            norm.train()
        try:
            yield
        finally:
            # A training-mode pass moved the running statistics.
            for norm, state in zip(self.norms, self._saved, strict=True):
                norm.load_state_dict(state)
                norm.eval()

    def measure(self, weight: Tensor, probes: Sequence[tuple[float, Tensor]]) -> LayerResponse:
        """The response of the layer whose weight tensor (in the model) is `weight`, from its
        probes: (relative error, the reconstruction to put in its place)."""
        original = weight.detach().clone()
        points = []
        try:
            for error, reconstruction in probes:
                with torch.no_grad():
                    weight.copy_(reconstruction)
                with self._reestimated():
                    points.append((float(error), self.distortion()))
                self.probes += 1
        finally:
            with torch.no_grad():
                weight.copy_(original)
        # A probe that moved nothing measurable says nothing about the response's shape.
        points = sorted(p for p in points if p[1] > _TINY) or [(max(points)[0], _TINY)]
        return LayerResponse(tuple(e for e, _ in points), tuple(d for _, d in points))


def _first(batch: Inputs, n: int) -> Inputs:
    """The first `n` examples of a batch (each tensor of a tuple alike)."""
    if isinstance(batch, tuple):
        return tuple(t[:n] for t in batch)
    return batch[:n]


def gaussian_noise(weight: Tensor, error: float, seed: int) -> Tensor:
    """`weight` plus Gaussian noise of relative energy `error` (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(weight.shape, generator=generator, dtype=torch.float64)
    energy = float(weight.double().square().sum()) or 1.0
    noise *= math.sqrt(error * energy / float(noise.square().sum()))
    return weight + noise.to(weight)
