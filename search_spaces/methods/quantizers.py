"""Fake quantizers for fine-tuning whose integer form is what gets exported (METHODS.md, N2UQ and
AdamBNN).

`WeightQuantizer` — b-bit weights, b in {1, 2, 3, 4, 8, 16}:
- Levels are uniform and symmetric per output channel c: `scale_c · (2q/(L−1) − 1)`, q in
  0…L−1, L = 2**b, `scale_c = alpha_c · mean|W_c|`. mean|W_c| is read from the weight passed in
  (detached, as N2UQ and AdamBNN do), so the scale follows the weight as it is fine-tuned; `alpha`
  is a learnable clip multiplier per channel.
- 1 bit is AdamBNN's binary weight: sign(W) · mean|W_c|, `alpha` a fixed buffer of ones.
- Export contract: `forward(w)` is bitwise equal to `dequantize(*quantize(w), bits)` — in eval mode
  under no_grad, which is what the exporter checks, and in training too. Both go through the same
  two helpers (`_codes`, `_dequantize`); with gradients the forward adds an exact zero that carries
  the straight-through gradient.

`ActivationQuantizer` — N2UQ's activation quantizer, b in {2, 3, 4, 8}:
- A start point s and n = 2**b − 1 positive interval lengths a_i lay out intervals
  [e_i, e_{i+1}], e_0 = s, e_{i+1} = e_i + a_i. The thresholds sit at the intervals' midpoints,
  and the output is `out_start + out_step · c`, c the number of thresholds the input passes:
  nonuniform input thresholds, uniform output levels (so the next layer can run on integers).
- The forward depends only on the parameters and buffers (start, lengths, out_start, out_step,
  min_length), all fp32 tensors in the state dict, so a reloaded quantizer gives the same outputs.

Straight-through estimators (the forward value never depends on them):
- b ≥ 2 weights: N2UQ's identity STE inside the clip range [−scale_c, scale_c], zero outside; the
  gradient to alpha is LSQ's (the surrogate treats rounding as the identity, so alpha feels the
  quantization error inside the range and the clipping outside).
- 1-bit weights: AdamBNN's clipped STE, gradient 1 where |w| ≤ 1 in the weight's own units (not in
  units of the scale), as in AdamBNN's code.
- Activations: N2UQ's generalized STE, the piecewise-linear map through (e_i, i) and
  (e_{i+1}, i + 1) whose rounding is c; its gradient reaches the input, the lengths and the start
  point. The output parameters get the ordinary gradients of `out_start + out_step · c`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from search_spaces.knobs import ACT_BITS, WEIGHT_BITS
from search_spaces.methods.threads import one_thread

__all__ = ["ACTIVATION_QUANT_BITS", "WEIGHT_QUANT_BITS", "ActivationQuantizer", "WeightQuantizer"]

# 32 bits means "leave the layer as it is": the caller skips the quantizer.
WEIGHT_QUANT_BITS = tuple(b for b in WEIGHT_BITS if b < 32)
ACTIVATION_QUANT_BITS = tuple(b for b in ACT_BITS if b < 32)

# Floors that keep the scale positive: an all-zero (pruned) channel, or alpha driven to or below
# zero by the optimizer, would otherwise divide by zero.
_MIN_MEAN_ABS = 1e-12
_MIN_ALPHA = 1e-3
# Clip ranges tried at initialisation, as fractions of each channel's no-clipping range
# (max|W_c|): 0.05, 0.075, …, 1.0. The error is flat near its minimum, so this step is enough.
_ALPHA_FRACTIONS = torch.linspace(0.05, 1.0, 39)
# Weights per block of the grid search: about 1 MiB, so a block stays in cache across the grid.
_FIT_BLOCK = 1 << 18
# Activation calibration: clip-range fractions tried, and the sample size it looks at.
_RANGE_FRACTIONS = torch.linspace(0.05, 1.0, 39)
_CALIBRATION_SAMPLES = 1 << 20


def calibration_sample(x: Tensor) -> Tensor:
    """The activations a quantizer calibrates on: `x` flattened to float32 on the CPU, at most
    2**20 of its elements drawn with a fixed seed.

    Raises:
        ValueError: if `x` is empty or not finite.
    """
    sample = x.detach().reshape(-1).to(torch.float32).cpu()
    if sample.numel() == 0 or not bool(torch.isfinite(sample).all()):
        raise ValueError("init_from needs a non-empty batch of finite activations")
    if sample.numel() > _CALIBRATION_SAMPLES:
        generator = torch.Generator().manual_seed(0)
        picks = torch.randint(sample.numel(), (_CALIBRATION_SAMPLES,), generator=generator)
        sample = sample[picks]
    return sample


# Smallest interval length, relative to the initial one: keeps thresholds sorted and the
# surrogate's slope 1/a_i finite (N2UQ floors its lengths at a fixed 1e-3 for the same reason).
_MIN_LENGTH_FRACTION = 1e-3


def _channel_view(scale: Tensor, ndim: int) -> Tensor:
    """(C_out,) → (C_out, 1, …, 1), to broadcast against a weight of `ndim` dimensions."""
    return scale.reshape(-1, *([1] * (ndim - 1)))


def _codes(weight: Tensor, scale: Tensor, bits: int) -> Tensor:
    """Integer codes q in [0, 2**bits − 1] of `weight` at per-channel `scale`, as float32."""
    if bits == 1:
        # The sign itself, exact for tiny weights too (rounding (u + 1)/2 would lose their sign).
        return (weight > 0).to(torch.float32)
    levels = 1 << bits
    u = (weight / _channel_view(scale, weight.ndim)).clamp(-1.0, 1.0)
    # round((u + 1)(L − 1)/2), written as floor(u(L − 1)/2 + L/2); u in [−1, 1] keeps q in range.
    return torch.floor(u * ((levels - 1) / 2) + levels // 2)


def _dequantize(q: Tensor, scale: Tensor, bits: int) -> Tensor:
    """`scale_c · (2q/(L − 1) − 1)`; q float32. The one expression both paths evaluate."""
    return _channel_view(scale, q.ndim) * (q * (2.0 / ((1 << bits) - 1)) - 1.0)


def _mean_abs(weight: Tensor) -> Tensor:
    """Per-output-channel mean |W|, detached and floored, shape (C_out,)."""
    flat = weight.detach().reshape(weight.shape[0], -1)
    return flat.abs().mean(dim=1).clamp_min(_MIN_MEAN_ABS)


@torch.no_grad()
def _fit_alpha(weight: Tensor, bits: int) -> Tensor:
    """Per channel, the alpha on a grid that minimises ||W_c − Q(W_c)||² (see `WeightQuantizer`)."""
    flat = weight.detach().to(torch.float32).reshape(weight.shape[0], -1)
    # Cache-sized blocks of channels: twice as fast on big layers as one pass over all of them.
    rows = max(1, _FIT_BLOCK // flat.shape[1])
    with one_thread():  # see search_spaces.methods.threads
        blocks = [_fit_alpha_rows(flat[i : i + rows], bits) for i in range(0, len(flat), rows)]
    return torch.cat(blocks)


def _squared_errors(flat: Tensor, scale: Tensor, bits: int) -> Tensor:
    """Per row of `flat`, ‖W − Q(W)‖² at per-row `scale`: `_dequantize(_codes(…))` term by term,
    in one buffer updated in place (the same values, half the time of the grid search)."""
    if bits == 1:
        return (_dequantize(_codes(flat, scale, bits), scale, bits) - flat).square().sum(dim=1)
    levels = 1 << bits
    view = _channel_view(scale, flat.ndim)
    work = flat / view
    work.clamp_(-1.0, 1.0).mul_((levels - 1) / 2).add_(levels // 2).floor_()  # the codes
    work.mul_(2.0 / (levels - 1)).sub_(1.0).mul_(view).sub_(flat)  # dequantized, minus W
    return work.square_().sum(dim=1)


def _fit_alpha_rows(flat: Tensor, bits: int) -> Tensor:
    mean_abs = _mean_abs(flat)
    no_clip = flat.abs().amax(dim=1) / mean_abs
    no_clip = torch.where(no_clip > 0, no_clip, torch.ones_like(no_clip))
    best_alpha = no_clip.clone()
    best_error = torch.full_like(no_clip, float("inf"))
    for fraction in _ALPHA_FRACTIONS.tolist():
        alpha = (fraction * no_clip).clamp_min(_MIN_ALPHA)
        scale = alpha * mean_abs
        error = _squared_errors(flat, scale, bits)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_alpha = torch.where(better, alpha, best_alpha)
    return best_alpha


class WeightQuantizer(nn.Module):
    """Per-output-channel symmetric uniform fake quantizer for a weight of shape (C_out, …).

    Initialisation: for b ≥ 2, alpha is chosen per channel by a grid search over clip ranges
    0.05…1.0 × max|W_c| minimising the squared quantization error of `weight` (N2UQ's fixed
    initial clip, 2(L − 1)/L × mean|W_c|, clips 8-bit weights far too hard before training); for
    b = 1, alpha is a buffer of ones (AdamBNN has no clip parameter).

    Args:
        weight: the layer's weight, shape (C_out, …), used to calibrate alpha; not stored.
        bits: 1, 2, 3, 4, 8 or 16.

    Raises:
        ValueError: if `bits` is not supported or `weight` is not a non-empty float tensor.
    """

    alpha: Tensor

    def __init__(self, weight: Tensor, bits: int) -> None:
        super().__init__()
        if bits not in WEIGHT_QUANT_BITS:
            raise ValueError(
                f"weight bits must be one of {WEIGHT_QUANT_BITS}, got {bits!r} "
                "(32 bits leaves the layer unquantized: do not build a quantizer for it)"
            )
        if not weight.dtype.is_floating_point or weight.ndim == 0 or weight.numel() == 0:
            raise ValueError(
                f"weight must be a non-empty float tensor of shape (C_out, ...), got dtype "
                f"{weight.dtype} and shape {tuple(weight.shape)}"
            )
        self.bits = bits
        if bits == 1:
            self.register_buffer("alpha", torch.ones(weight.shape[0]))
        else:
            self.alpha = nn.Parameter(_fit_alpha(weight, bits))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, channels={self.alpha.numel()}"

    def _scale(self, weight: Tensor) -> Tensor:
        """scale_c = alpha_c · mean|W_c|, float32 (C_out,); carries alpha's gradient."""
        return self.alpha.clamp_min(_MIN_ALPHA) * _mean_abs(weight)

    def forward(self, weight: Tensor) -> Tensor:
        """The fake-quantized weight (float32, weight's shape) with straight-through gradients.

        Its value is always `dequantize(*quantize(weight), bits)`, bitwise.
        """
        w = weight.to(torch.float32)
        scale = self._scale(w)
        q = _codes(w.detach(), scale.detach(), self.bits)
        out = _dequantize(q, scale.detach(), self.bits)
        if not (torch.is_grad_enabled() and (w.requires_grad or scale.requires_grad)):
            return out
        if self.bits == 1:
            surrogate = w.clamp(-1.0, 1.0)
        else:
            s = _channel_view(scale, w.ndim)
            clipped = (w / s).clamp(-1.0, 1.0)
            levels = q * (2.0 / ((1 << self.bits) - 1)) - 1.0
            surrogate = s * (clipped + (levels - clipped).detach())
        # x − x.detach() is exactly zero, so the value stays `out` bit for bit.
        return out + (surrogate - surrogate.detach())

    @torch.no_grad()
    def quantize(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        """Integer form of `weight`.

        Returns:
            `(q, scale)`: q int64 in [0, 2**bits − 1] of weight's shape, scale float32 (C_out,).
        """
        w = weight.to(torch.float32)
        scale = self._scale(w).detach()
        return _codes(w, scale, self.bits).to(torch.int64), scale

    @staticmethod
    def dequantize(q: Tensor, scale: Tensor, bits: int) -> Tensor:
        """Float32 weight of q's shape from codes `q` and per-channel `scale` (C_out,)."""
        return _dequantize(q.to(torch.float32), scale.to(torch.float32), bits)


class ActivationQuantizer(nn.Module):
    """N2UQ's activation quantizer: learned nonuniform thresholds, uniform output levels.

    Before `init_from`, the layout is N2UQ's default: start 0, equal intervals up to 2, outputs
    0…2. Call `init_from` with real activations before fine-tuning. A length pushed below
    `min_length` is held there and gets no gradient (as with N2UQ's floor); train these
    parameters at a small learning rate (N2UQ: a tenth of the weights').

    Args:
        bits: 2, 3, 4 or 8 (32 bits: do not build a quantizer).

    Raises:
        ValueError: if `bits` is not supported.
    """

    min_length: Tensor

    def __init__(self, bits: int) -> None:
        super().__init__()
        if bits not in ACTIVATION_QUANT_BITS:
            raise ValueError(
                f"activation bits must be one of {ACTIVATION_QUANT_BITS}, got {bits!r} "
                "(32 bits leaves activations unquantized: do not build a quantizer for them)"
            )
        self.bits = bits
        intervals = (1 << bits) - 1
        width = 2.0 / intervals
        self.start = nn.Parameter(torch.zeros(()))
        self.lengths = nn.Parameter(torch.full((intervals,), width))
        self.out_start = nn.Parameter(torch.zeros(()))
        self.out_step = nn.Parameter(torch.tensor(width))
        self.register_buffer("min_length", torch.tensor(_MIN_LENGTH_FRACTION * width))

    def extra_repr(self) -> str:
        return f"bits={self.bits}"

    def _layout(self) -> tuple[Tensor, Tensor, Tensor]:
        """(lengths, interval ends, thresholds), the lengths floored at `min_length`.

        The thresholds e_i + a_i/2 are nondecreasing in exact arithmetic; the running maximum
        makes them so in floats too, as `torch.bucketize` needs, whatever the start's magnitude.
        """
        lengths = torch.maximum(self.lengths, self.min_length)
        ends = self.start + torch.cumsum(lengths, 0)
        thresholds = torch.cummax((ends - lengths / 2).detach(), 0).values
        return lengths, ends, thresholds

    def thresholds(self) -> Tensor:
        """The 2**bits − 1 input thresholds (interval midpoints), nondecreasing, detached."""
        return self._layout()[2]

    def levels(self) -> Tensor:
        """The 2**bits output levels `out_start + out_step · c`, c = 0…2**bits − 1, detached."""
        with torch.no_grad():
            counts = torch.arange(1 << self.bits, dtype=torch.float32)
            return self.out_start + self.out_step * counts

    @torch.no_grad()
    def init_from(self, x: Tensor) -> None:
        """Calibrate from a batch of real activations.

        The clip range [lo, hi] shrinks toward a center — 0 when the data straddle or touch it
        (post-ReLU data keep lo = 0 exactly, so their zeros stay exact), else the data's end
        nearest 0 — by fractions 0.05…1.0 of the data's range; the fraction with the least
        squared error of a uniform quantizer on [lo, hi] wins. Intervals start equal (N2UQ's
        initialisation) and the output levels are the uniform quantizer's levels. At most 2**20
        elements, drawn with a fixed seed, are looked at.

        Raises:
            ValueError: if `x` is empty or not finite.
        """
        sample = calibration_sample(x)
        low, high = float(sample.min()), float(sample.max())
        center = min(max(0.0, low), high)
        intervals = (1 << self.bits) - 1
        best = (float("inf"), low, high)
        for fraction in _RANGE_FRACTIONS.tolist():
            lo = center + fraction * (low - center)
            hi = center + fraction * (high - center)
            step = (hi - lo) / intervals
            if step <= 0:
                continue
            counts = torch.round((sample - lo) / step).clamp(0, intervals)
            error = float((lo + step * counts - sample).square().sum())
            if error < best[0]:
                best = (error, lo, hi)
        _, lo, hi = best
        # Constant data: any small positive width reproduces it.
        step = (hi - lo) / intervals if hi > lo else max(abs(lo), 1.0) * 1e-3
        self.start.fill_(lo)
        self.lengths.fill_(step)
        self.out_start.fill_(lo)
        self.out_step.fill_(step)
        self.min_length.fill_(_MIN_LENGTH_FRACTION * step)

    def forward(self, x: Tensor) -> Tensor:
        """Quantized activations `out_start + out_step · c`, same shape as `x`."""
        lengths, ends, thresholds = self._layout()
        # c = number of thresholds strictly below x (N2UQ passes a threshold when x > t).
        counts = torch.bucketize(x.detach(), thresholds.to(x.dtype)).to(torch.float32)
        params = (self.start, self.lengths, self.out_start, self.out_step)
        wants_grad = x.requires_grad or any(p.requires_grad for p in params)
        if torch.is_grad_enabled() and wants_grad:
            counts = counts + self._surrogate_delta(x, lengths, ends)
        return self.out_start + self.out_step * counts

    def _surrogate_delta(self, x: Tensor, lengths: Tensor, ends: Tensor) -> Tensor:
        """g − g.detach() for N2UQ's piecewise-linear surrogate g: exactly zero, with g's gradient.

        g = i + (x − e_i)/a_i on interval i, clamped to [0, n] outside the intervals.
        """
        intervals = lengths.numel()
        inner = ends[:-1].detach().to(x.dtype).contiguous()
        index = torch.bucketize(x.detach(), inner, right=True)  # interval holding x, 0…n − 1
        left = ends[index] - lengths[index]
        g = (index.to(x.dtype) + (x - left) / lengths[index]).clamp(0.0, float(intervals))
        return g - g.detach()
