"""How the `compplan` commands print: JSON documents, aligned tables and sizes in MiB.

The commands compute in the packages and only render here, so that what a command prints is the
same whatever computed it.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from predictors.latency import FitReport, ProfileSummary
    from predictors.profile import RelativeTiming
    from predictors.size import SizeReport
    from search_spaces.graph import ModelGraph

__all__ = [
    "applied_text",
    "fit_text",
    "inspect_text",
    "measurement_text",
    "mib",
    "print_json",
    "profile_text",
    "score_text",
    "size_text",
    "table",
]


def print_json(data: object) -> None:
    """Print `data` as indented JSON on stdout."""
    print(json.dumps(data, indent=2))


def table(
    rows: Sequence[Sequence[object]], header: Sequence[str], right: Collection[int] = frozenset()
) -> str:
    """An aligned text table: the header, a rule, then one line per row.

    Args:
        rows: cells, one sequence per row, as many as `header` has.
        header: column titles.
        right: indices of the columns to right-align (numbers).
    """
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[object]) -> str:
        cells = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def score_text(metric: str, value: float | None) -> str:
    """A task's score as people read it: shares ("accuracy", "agreement") as percentages, other
    metrics (cosine similarity) to four decimals."""
    if value is None:
        return "-"
    return f"{value:.2%}" if metric in ("accuracy", "agreement") else f"{value:.4f}"


def mib(n_bytes: float) -> str:
    """Bytes as MiB (2^20 bytes) with three decimals: "1.540 MiB"."""
    return f"{n_bytes / 2**20:.3f} MiB"


def inspect_text(graph: ModelGraph, *, groups: bool = False) -> str:
    """`compplan inspect`: every module with parameters (`ModelGraph.inventory`), then totals;
    with `groups`, the coupling groups too."""
    rows = [
        [
            r["name"],
            r["kind"],
            "×".join(map(str, r["weight_shape"])) if r["weight_shape"] else "-",
            f"{r['params']:,}",
            f"{r['macs']:,}" if r["macs"] else "-",
            "-" if r["group"] is None else str(r["group"]),
            "yes" if r["compressible"] else "no: " + r["reason"],
        ]
        for r in graph.inventory()
    ]
    header = ["layer", "kind", "weight", "params", "MACs", "group", "compressible"]
    prunable = sum(g.prunable for g in graph.groups)
    lines = [
        table(rows, header, {3, 4}),
        "",
        f"{graph.model_name}: {len(graph.layers)} compressible layers, {len(graph.kept)} "
        f"module{'' if len(graph.kept) == 1 else 's'} kept as is; {graph.total_params:,} "
        f"parameters ({graph.compressible_params:,} in compressible layers), "
        f"{graph.total_macs:,} MACs, baseline {mib(graph.baseline_bits / 8)} at 32 bits",
        f"coupling groups: {len(graph.groups)} ({prunable} prunable)"
        + (f"; channel pruning is off: {graph.pruning_off_reason}" if not prunable else ""),
    ]
    for g in graph.groups if groups else ():
        status = "prunable" if g.prunable else f"not prunable: {g.reason}"
        lines.append(f"  group {g.id} ({g.channels} ch, {status}): {', '.join(g.layers)}")
    return "\n".join(lines)


def size_text(report: SizeReport) -> str:
    """`compplan size`: each planned layer's method, channels, k_eff, bytes and ratio, then the
    total against the baseline."""
    rows = [
        [
            layer.name,
            layer.method,
            f"{layer.out_channels}/{layer.in_channels}",
            str(layer.k_eff or "-"),
            f"{layer.bits / 8:,.0f}",
            f"{layer.ratio:.1f}×",
        ]
        for layer in report.layers
    ]
    header = ["layer", "method", "out/in ch", "k_eff", "bytes", "ratio"]
    lines = [table(rows, header, {3, 4, 5}), ""]
    if report.kept_bits:
        lines.append(f"modules kept as is: {report.kept_bits // 8:,} bytes")
    lines.append(
        f"size {report.size_bytes:,} bytes = {report.size_mib:.3f} MiB; baseline "
        f"{mib(report.baseline_bits / 8)}; compression {report.compression_ratio:.1f}×"
    )
    return "\n".join(lines)


def onnx_export_text(report: dict) -> str:
    """`compplan export`: bytes against the prediction, and how the runtime will run it."""
    kernels: dict[str, int] = {}
    for layer in report["layers"].values():
        kernels[layer["kernel"]] = kernels.get(layer["kernel"], 0) + 1
    runs = ", ".join(f"{count} in {kind}" for kind, count in sorted(kernels.items()))
    batch = "any batch" if report["dynamic_batch"] else "the example's batch only"
    return (
        f"wrote {report['path']}: {report['file_bytes']:,} bytes on disk; stored tensors "
        f"{report['payload_bytes']:,} bytes, of which planned weights "
        f"{report['planned_bytes']:,} (predicted {report['predicted_bytes']:,.0f} for the plan's "
        f"layers, biases and BatchNorms){_quantizer_bytes(report)}; ONNX opset "
        f"{report['opset']}, {batch}; planned layers: {runs or 'none'}; run it with "
        f"onnxruntime.InferenceSession, or `compplan eval {report['path']}`"
    )


def _quantizer_bytes(report: dict) -> str:
    """The activation quantizers' stored bytes, which the size convention leaves out."""
    count = report.get("quantizer_bytes", 0)
    return f" and activation quantizers {count:,} (not in the prediction)" if count else ""


def applied_text(result: dict, out: str) -> str:
    """`compplan apply`: the task's score before and after (with a task), how it fine-tuned,
    bytes against the prediction."""
    lines = []
    before, after, metric = result["score_before"], result["score_after"], result["metric"]
    if result.get("distill"):
        epochs = f"{result['epochs']} epoch{'s' * (result['epochs'] != 1)}"
        lines.append(
            f"fine-tuned {epochs} at lr {result['lr']:g} on {result['data']} data, distilling "
            f"with {result['distill']} ({result['distill_why']}); kept the state after "
            f"{_epoch_text(result['best_epoch'])}, by validation {metric or 'score'}"
        )
    if before is not None:
        lines.append(
            f"test {metric} {score_text(metric, before)} uncompressed, "
            f"{score_text(metric, result['score_applied'])} compressed, "
            f"{score_text(metric, after)} fine-tuned ({result['task']})"
        )
    lines.append(
        f"wrote {out}: {result['file_bytes']:,} bytes on disk; weights "
        f"{result['payload_bytes']:,} bytes (predicted {result['predicted_bytes']:,.0f}), "
        f"{result['compression_ratio']:.1f}× smaller than {mib(result['baseline_bytes'])}"
    )
    return "\n".join(lines)


def _epoch_text(epoch: int | None) -> str:
    if epoch is None:
        return "the last epoch, having no validation data to choose by"
    return "no epoch: fine-tuning did not improve on applying" if epoch == 0 else f"epoch {epoch}"


def measurement_text(m: RelativeTiming, label: str) -> str:
    """`compplan measure-latency`: the plan's ratio to the original, its spread, and the ms."""
    return (
        f"{label}: ×{m.ratio:.3f} of the uncompressed model (spread {m.spread:.1%} over "
        f"{m.blocks} blocks): {m.latency_ms:.3f} ms against {m.reference_ms:.3f} ms "
        f"uncompressed; batch {m.batch}, {m.device['threads']} thread(s), {m.device['cpu']}"
    )


def profile_text(s: ProfileSummary, model: str, out: str) -> str:
    """`compplan profile`: what was measured, how long it took, and the next command."""
    lat, device = s.latency_ms, s.device
    took = "" if s.seconds is None else f" in {s.seconds:.0f} s"
    # Records are data: the spec of your own model in them runs again only when you say so.
    trust = "" if model.startswith("zoo:") else " --trust-specs"
    figures = f"{lat['min']:.3f}–{lat['max']:.3f} ms, median {lat['median']:.3f} ms"
    if s.ratio is not None:
        r = s.ratio
        figures = (
            f"×{r['min']:.3f}–×{r['max']:.3f} of the uncompressed model's {s.reference_ms:.3f} "
            f"ms (median ×{r['median']:.3f})"
        )
    if s.link is not None:
        figures += f"; the uncompressed model takes {s.link:.2f} calibration-module units"
    # One plan fits no predictor alone: it is the record that goes beside other models'.
    records = out if s.plans > 1 else f"OTHER_MODELS.parquet ... {out}"
    plans = "1 plan" if s.plans == 1 else f"{s.plans} plans"
    runtime = device.get("runtime", "torch")
    flag = "" if runtime == "onnxruntime" else f" --runtime {runtime}"
    return (
        f"measured {plans} of {model} and {s.layers} single layers{took} on {runtime}, "
        f"{device['cpu']} ({device['device']}, {device['threads']} thread(s)): {figures}, "
        f"spread within a measurement {s.spread_median:.1%}\nwrote {out}; next: compplan "
        f"fit-latency {records} --out latency.json{flag}{trust}"
    )


def fit_text(report: FitReport, out: str) -> str:
    """`compplan fit-latency`: the held-out score (when there is one) and what was written."""
    h, device = report.holdout, report.predictor.fingerprint
    lines = []
    if h is not None:
        lines.append(
            f"held-out {h.plans} plans: {h.within_10pct:.1%} within ±10%, mean error {h.mape:.1%}"
        )
    unit = report.predictor.unit_ms
    scale = (
        f"in calibration-module units of {unit:.3f} ms"
        if report.predictor.unit == "units"
        else "in ms (records of an older compplan)"
    )
    lines.append(
        f"fit a {report.kind} predictor on {report.plans} plans in {report.fit_seconds:.1f} s, "
        f"{scale}, for {report.predictor.runtime} on {device['cpu']} ({device['device']}, "
        f"{device['threads']} thread(s)); wrote {out}"
    )
    return "\n".join(lines)


def file_latency_text(check: dict, path: str) -> str:
    """`compplan apply --onnx`: the file's measured latency beside its prediction and budget."""
    text = (
        f"measured {path} on {check['runtime']}: ×{check['measured_ratio']:.3f} of the "
        f"uncompressed model ({check['measured_ms']:.2f} ms here, spread "
        f"{check['spread']:.1%})"
    )
    if check["predicted_ratio"] is not None:
        text += f"; predicted ×{check['predicted_ratio']:.3f}"
        if check.get("priced_on") not in (None, check["runtime"]):
            text += f" (priced on {check['priced_on']})"
    if check["budget_ratio"] is not None:
        verdict = "within" if check["within"] else "OVER"
        text += f"; budget ×{check['budget_ratio']:.3f}: {verdict}"
    return text
