"""LR²VQ / PQ weights as one unit: config, knobs, size, proxy estimate, module, export.

Size (DESIGN.md): codes `(N/m)·log2(k_eff)` bits, codebook `16·k_eff·d̃`, LR²VQ projection
`16·d̃·m` (absent when d̃ = m, plain PQ); `k_eff = min(k, largest power of two ≤ C_out·(D/m)/4)`.
The clustering itself is `search_spaces.methods.lr2vq`.

Proxy: estimated, not clustered, so that a ResNet-50 space (tens of thousands of options) is
scored in seconds. The subvectors X are projected on their top d̃ right singular vectors; the
low-rank error is the energy of the other m − d̃ (exact, LR²VQ's SVD initialisation). The
clustering error of k centroids in the d̃-dimensional latent space is Zador's high-resolution
estimate, d̃ · G(d̃) · 2π((d̃+2)/d̃)^((d̃+2)/2) · (∏λ_i)^(1/d̃) · k^(−2/d̃) per subvector (λ the
latents' covariance eigenvalues, G the normalized second moment of the best d̃-dimensional
quantizer cell), capped at the latents' variance (what one centroid leaves). This is LR²VQ's
trade-off per layer: a smaller d̃ loses low-rank energy but clusters better.

Codebooks and projections are stored in fp16, so `VQWeight` always computes with fp16-rounded
values (straight-through for the gradient): the in-memory model and the reloaded one agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from search_spaces.errors import PlanError
from search_spaces.knobs import K_MAX, K_MIN, divisors, effective_k, is_int, is_power_of_two
from search_spaces.methods._base import (
    BuildSettings,
    WeightConfig,
    WeightMethod,
    WeightShapes,
    check_knob,
)
from search_spaces.methods._registry import register_weight_method
from search_spaces.methods.bitpack import pack_bits, unpack_bits, unpack_bits_traced
from search_spaces.methods.lr2vq import (
    POINTS_PER_CENTROID,
    VQResult,
    decode,
    lr2vq,
    subvectors,
)

if TYPE_CHECKING:
    from search_spaces.graph import LayerSpec

__all__ = ["VQConfig", "VQKnobs", "VQWeight", "VectorQuantization", "vq_error_estimate"]

_POWERS_OF_TWO = tuple(2**i for i in range(1, 13))


@dataclass(frozen=True)
class VQConfig(WeightConfig):
    """LR²VQ (d̃ < m) or PQ (d̃ = m, or None).

    Attributes:
        k: clusters, a power of two in 2..4096 (clamped to the layer's k_eff).
        m: subvector length; divides the layer's row length D after pruning.
        d_tilde: clustering dimensionality, 1..m; None or m means plain PQ.
    """

    method = "vq"
    k: int
    m: int
    d_tilde: int | None = None

    def __post_init__(self) -> None:
        if not is_int(self.k):
            raise PlanError(f"k={self.k!r} must be an integer (a power of two)", field="k")
        if not is_power_of_two(self.k):
            raise PlanError(f"k={self.k!r} is not a power of two", field="k")
        if not K_MIN <= self.k <= K_MAX:
            raise PlanError(f"k={self.k} is outside {K_MIN}..{K_MAX}", field="k")
        if not is_int(self.m) or self.m < 1:
            raise PlanError(f"m={self.m!r} is not a positive integer", field="m")
        if self.d_tilde is not None and (
            not is_int(self.d_tilde) or not 1 <= self.d_tilde <= self.m
        ):
            raise PlanError(f"d_tilde={self.d_tilde!r} must be in 1..m={self.m}", field="d_tilde")
        if self.d_tilde == self.m:  # one spelling of plain PQ, so equal plans compare equal
            object.__setattr__(self, "d_tilde", None)

    @property
    def clustering_dim(self) -> int:
        """d̃ with its default filled in: m for plain PQ."""
        return self.m if self.d_tilde is None else self.d_tilde

    @classmethod
    def from_fraction(cls, k: int, m: int, fraction: float) -> VQConfig:
        """The config whose d̃ is the fraction `fraction` of m: d̃ = max(1, round(f·m))."""
        return cls(k=k, m=m, d_tilde=max(1, round(fraction * m)))


@dataclass(frozen=True)
class VQKnobs:
    """VQ's search knobs.

    Attributes:
        k: cluster counts, powers of two in 2..4096.
        m: subvector lengths; None means every divisor of the layer's row length up to `max_m`.
        max_m: the largest subvector length considered when `m` is None.
        d_tilde_fractions: d̃ as fractions of m (1.0 is plain PQ); d̃ = max(1, round(f·m)).
    """

    k: tuple[int, ...] = _POWERS_OF_TWO
    m: tuple[int, ...] | None = None
    max_m: int = 32
    d_tilde_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)

    def __post_init__(self) -> None:
        for f in fields(self):
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        check_knob(
            self.k,
            lambda v: is_power_of_two(v) and K_MIN <= v <= K_MAX,
            "k",
            "powers of two in 2..4096",
        )
        if self.m is not None:
            check_knob(self.m, lambda v: is_int(v) and v >= 1, "m", "positive integers")
        check_knob(
            self.d_tilde_fractions, lambda v: 0 < v <= 1, "d_tilde_fractions", "fractions in (0, 1]"
        )


def _fp16_exact(t: Tensor) -> Tensor:
    """t rounded to fp16 precision in the forward pass; the gradient passes as if unrounded."""
    return t + (t.half().float() - t).detach()


class VQWeight(nn.Module):
    """A vector-quantized weight: codes (buffer, fixed) and codebook / projection (trainable)."""

    def __init__(self, result: VQResult):
        super().__init__()
        self.shape = tuple(result.shape)
        self.register_buffer("codes", result.codes.clone())
        self.codebook = nn.Parameter(result.codebook.half().float())
        if result.projection is None:
            self.projection = None
        else:
            self.projection = nn.Parameter(result.projection.half().float())

    @property
    def code_bits(self) -> int:
        return (self.codebook.shape[0] - 1).bit_length()

    def forward(self) -> Tensor:
        projection = None if self.projection is None else _fp16_exact(self.projection)
        return decode(self.codes, _fp16_exact(self.codebook), projection, self.shape)


class VQOnnxWeight(nn.Module):
    """A VQ weight as the exported ONNX file stores it: codes bit-packed at log2(k_eff) bits,
    codebook and projection in fp16; forward decodes it (`VQMethod.onnx_weight`)."""

    def __init__(self, source: VQWeight):
        super().__init__()
        self.code_bits, self.count = source.code_bits, source.codes.numel()
        self.shape = tuple(source.shape)
        self.register_buffer("codes", pack_bits(source.codes, source.code_bits))
        self.register_buffer("codebook", source.codebook.detach().cpu().half().contiguous())
        projection = source.projection
        half = None if projection is None else projection.detach().cpu().half().contiguous()
        self.register_buffer("projection", half)

    def forward(self) -> Tensor:
        codes = unpack_bits_traced(self.codes, self.code_bits, self.count)
        projection = None if self.projection is None else self.projection.float()
        return decode(codes, self.codebook.float(), projection, self.shape)


def _floor_log2(values: np.ndarray) -> np.ndarray:
    """floor(log2(v)) for positive integers below 2**53, exactly (frexp does not round)."""
    _, exponent = np.frexp(values.astype(np.float64))
    return (exponent - 1).astype(np.int64)


def _cell_moment(d: int) -> float:
    """G(d): 1/12 in one dimension, falling toward 1/(2πe) (an interpolation in 1/√d)."""
    limit = 1 / (2 * math.pi * math.e)
    return limit + (1 / 12 - limit) / math.sqrt(d)


class _Spectrum:
    """One layer's subvectors at one m, with what the VQ estimate needs per d̃ (cached).

    Everything comes from the m×m second-moment matrix of the subvectors and their mean, so a
    layer costs one pass over its weights per m.
    """

    def __init__(self, weight: Tensor, m: int):
        x = subvectors(weight.detach().to(torch.float64).cpu(), m)
        self.count = x.shape[0]
        second = (x.T @ x).numpy()
        mean = x.mean(dim=0).numpy()
        eigen, vectors = np.linalg.eigh(second)  # ascending
        order = np.argsort(eigen)[::-1]
        self.singular_sq = np.maximum(eigen[order], 0.0)  # squared singular values of X
        self.basis = vectors[:, order].T  # right singular vectors, as rows
        self.covariance = second / self.count - np.outer(mean, mean)
        self._latent_stats: dict[int, tuple[float, float, float]] = {}

    def latent_stats(self, d: int) -> tuple[float, float, float]:
        """(low-rank error, log geometric mean of the latents' variances, their total variance)
        for clustering dimension d: the latents are X projected on the top d singular vectors."""
        if d not in self._latent_stats:
            top = self.basis[:d]
            covariance = top @ self.covariance @ top.T
            eigen = np.maximum(np.linalg.eigvalsh(covariance), 1e-30)
            self._latent_stats[d] = (
                float(self.singular_sq[d:].sum()),
                float(np.log(eigen).mean()),
                float(eigen.sum()),
            )
        return self._latent_stats[d]


def vq_error_estimate(spectrum: _Spectrum, k: int, d: int) -> float:
    """Estimated ‖Ŵ − W‖² of LR²VQ with k centroids of dimension d (see the module doc)."""
    low_rank, log_geomean, variance = spectrum.latent_stats(d)
    zador = (
        d
        * _cell_moment(d)
        * 2
        * math.pi
        * ((d + 2) / d) ** ((d + 2) / 2)
        * math.exp(log_geomean - 2 * math.log(k) / d)
    )
    return low_rank + spectrum.count * min(zador, variance)


@register_weight_method
class VectorQuantization(WeightMethod):
    """LR²VQ / PQ (PQF's block sizes, annealed k-means, fp16 codebooks)."""

    name = "vq"
    config_type = VQConfig
    knobs_type = VQKnobs
    columns = ("k", "m", "d_tilde")

    def resolve(
        self, knobs: VQKnobs, spec: LayerSpec, rows: Set[int]
    ) -> tuple[VQKnobs | None, str]:
        candidates = (
            knobs.m
            if knobs.m is not None
            else tuple(d for d in divisors(spec.row_length) if d <= knobs.max_m)
        )
        valid = tuple(m for m in candidates if all(row % m == 0 for row in rows))
        if not valid:
            return (
                None,
                f"no m in {list(candidates)} divides every reachable row length {sorted(rows)}",
            )
        return VQKnobs(
            k=knobs.k, m=valid, max_m=knobs.max_m, d_tilde_fractions=knobs.d_tilde_fractions
        ), ""

    def parameters(self, knobs: VQKnobs) -> dict[str, tuple]:
        return {"k": knobs.k, "m": knobs.m, "d_tilde_fraction": knobs.d_tilde_fractions}

    def decode(self, values: Mapping[str, Any]) -> VQConfig:
        return VQConfig.from_fraction(values["k"], values["m"], values["d_tilde_fraction"])

    def candidates(self, knobs: VQKnobs) -> list[VQConfig]:
        # k innermost and ascending: of the ks that reach one k_eff the smallest comes first.
        configs = (
            VQConfig.from_fraction(k, m, fraction)
            for m in knobs.m
            for fraction in knobs.d_tilde_fractions
            for k in knobs.k
        )
        return list(dict.fromkeys(configs))

    def label(self, config: VQConfig) -> str:
        return f"vq k={config.k} m={config.m} d={config.clustering_dim}"

    def check(self, config: VQConfig, *, row_length: int, layer: str, pruned: bool = False) -> None:
        if row_length % config.m:
            valid = ", ".join(str(d) for d in divisors(row_length) if d <= 64)
            raise PlanError(
                f"m={config.m} does not divide the row length D={row_length}"
                f"{' after pruning' if pruned else ''} (valid m: {valid})",
                layer=layer,
                field="weights.m",
            )

    def to_columns(self, config: VQConfig) -> tuple[int, ...]:
        return (config.k, config.m, config.clustering_dim)

    def _k_eff_log2(self, columns: Mapping[str, np.ndarray], shapes: WeightShapes) -> np.ndarray:
        subvectors_ = shapes.out_channels * (shapes.row_length // columns["m"])
        cap_log2 = _floor_log2(np.maximum(subvectors_ // 4, 1))
        return np.minimum(_floor_log2(np.maximum(columns["k"], 1)), cap_log2)

    def bits(
        self, columns: Mapping[str, np.ndarray], shapes: WeightShapes
    ) -> dict[str, np.ndarray]:
        m, d = columns["m"], columns["d_tilde"]
        k_eff_log2 = self._k_eff_log2(columns, shapes)
        return {
            "codes": (shapes.elements // m) * k_eff_log2,
            "codebook": 16 * np.left_shift(1, k_eff_log2) * d,
            "projection": np.where(d < m, 16 * d * m, 0),
        }

    def facts(
        self, columns: Mapping[str, np.ndarray], shapes: WeightShapes
    ) -> dict[str, np.ndarray]:
        return {"k_eff": np.left_shift(1, self._k_eff_log2(columns, shapes))}

    def storage_key(self, config: VQConfig, *, out_channels: int, row_length: int) -> tuple:
        k_eff = effective_k(config.k, out_channels, row_length, config.m)
        return (k_eff, config.m, config.clustering_dim)

    def proxy_errors(self, weight: Tensor, configs: Sequence[VQConfig]) -> np.ndarray:
        weight = weight.detach().float().cpu()
        energy = float(weight.double().square().sum()) or 1.0
        spectra: dict[int, _Spectrum] = {}
        errors = np.zeros(len(configs))
        for i, config in enumerate(configs):
            if config.m not in spectra:
                spectra[config.m] = _Spectrum(weight, config.m)
            errors[i] = (
                vq_error_estimate(spectra[config.m], config.k, config.clustering_dim) / energy
            )
        return errors

    def build(self, weight: Tensor, config: VQConfig, settings: BuildSettings) -> nn.Module:
        result = lr2vq(
            weight,
            k=config.k,
            m=config.m,
            d_tilde=config.clustering_dim,
            iterations=settings.options.get("kmeans_iterations", 25),
            anneal=settings.options.get("anneal", True),
            seed=settings.seed,
            points_per_centroid=settings.options.get(
                "kmeans_points_per_centroid", POINTS_PER_CENTROID
            ),
        )
        return VQWeight(result).to(weight.device)

    def export_tensors(self, source: VQWeight) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors = {
            "codes": pack_bits(source.codes, source.code_bits),
            "codebook": source.codebook.detach().cpu().half().contiguous(),
        }
        if source.projection is not None:
            tensors["projection"] = source.projection.detach().cpu().half().contiguous()
        meta = {
            "shape": list(source.shape),
            "k_eff": source.codebook.shape[0],
            "d_tilde": source.codebook.shape[1],
            "m": source.codebook.shape[1]
            if source.projection is None
            else source.projection.shape[1],
            "count": source.codes.numel(),
        }
        return tensors, meta

    def onnx_weight(self, source: VQWeight) -> nn.Module:
        return VQOnnxWeight(source)

    def load_source(self, meta: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> nn.Module:
        bits = (int(meta["k_eff"]) - 1).bit_length()
        projection = tensors.get("projection")
        return VQWeight(
            VQResult(
                codes=unpack_bits(tensors["codes"], bits, int(meta["count"])),
                codebook=tensors["codebook"].float(),
                projection=None if projection is None else projection.float(),
                shape=tuple(meta["shape"]),
            )
        )
