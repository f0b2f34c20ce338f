"""Speed at real size: k-means before and after, side by side, and the stages of a search and an
apply on ResNet-50.

    .venv/bin/python scripts/bench_speed.py [--model zoo:resnet50] [--repeats 3] [--quick]

Measures in one run (figures printed and written to benchmarks/results/speed.json):
- k-means of every VQ layer of the `pqf-small` preset (PQF's small blocks, k = 256): the code as
  it was (`scripts/_kmeans_before.py`) and as it is (`search_spaces.methods.lr2vq.kmeans`), run
  on the same latents and seed one after the other, layer by layer (A B A B: the machine's phase
  moves both alike). Per repeat: both totals and their ratio, and the relative reconstruction
  error ‖Ŵ − W‖²/‖W‖² of both (sampling must not cost accuracy). Medians and spreads over the
  repeats. The before pass is long (minutes): `--before-repeats` bounds how many repeats time
  it; the rest time the new code only.
- k-means of three mid-size layers, before and after, while another torch process keeps the
  cores busy (what a second search or a worker on the same machine does): the old code's
  intra-op threads wait on descheduled threads at every operation;
- the proxy table of every option of the search space, the bits clip search as it was (a new
  tensor per operation) and as it is (one buffer in place), A B A B, with the largest difference
  between the two tables (0: the same values);
- the search problem's stages on the same model: discovery (fresh and from the graph cache),
  the layer sensitivities, the proxy table of every option, the ProxyObjective and the study
  space; and a whole `apply_plan_` of `pqf-small` (no fine-tuning), the new code only.
`--quick` runs one repeat on the 20 largest layers (a smoke run, not the published figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _kmeans_before as before  # scripts/ is on the path of a script run from it
import torch

from engine import ApplyConfig, apply_plan_
from planner.options import layer_options
from planner.presets import make_preset
from planner.proxy import ProxyObjective, layer_sensitivities, proxy_table
from planner.study_space import StudySpace
from search_spaces import discover
from search_spaces.attention import layer_weight
from search_spaces.knobs import effective_k
from search_spaces.methods import lr2vq as after
from search_spaces.methods import quantizers
from search_spaces.model_spec import load_model
from search_spaces.space import SearchSpace

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "speed.json"


def _spread(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": values,
    }


def vq_jobs(model, graph, plan) -> list[dict]:
    """(name, latents, k_eff, weight energy) of each VQ layer of `plan`, as `lr2vq` makes them."""
    jobs = []
    for name, layer_plan in plan.layers.items():
        config = layer_plan.weights
        if layer_plan.method != "vq" or config is None:
            continue
        weight = layer_weight(model, name).detach().float()
        x = after.subvectors(weight, config.m)
        d = config.clustering_dim
        projection = None
        latents = x
        if d < config.m:
            _, _, vh = torch.linalg.svd(x, full_matrices=False)
            projection = vh[:d].contiguous()
            latents = x @ projection.T
        k_eff = effective_k(
            config.k, weight.shape[0], x.shape[0] * config.m // weight.shape[0], config.m
        )
        jobs.append(
            {"name": name, "x": x, "latents": latents, "projection": projection, "k": k_eff}
        )
    return sorted(jobs, key=lambda job: -job["latents"].numel())


def _relative_error(job: dict, centroids, codes) -> float:
    vectors = centroids[codes]
    if job["projection"] is not None:
        vectors = vectors @ job["projection"]
    x = job["x"]
    return float((vectors - x).double().square().sum() / x.double().square().sum())


def kmeans_side_by_side(jobs: list[dict], *, with_before: bool) -> dict:
    """One repeat over every layer: before then after on each layer's latents."""
    seconds = {"before": 0.0, "after": 0.0}
    squared = {"before": 0.0, "after": 0.0}
    energy = 0.0
    for job in jobs:
        implementations = [("before", before.kmeans), ("after", after.kmeans)]
        layer_energy = float(job["x"].double().square().sum())
        energy += layer_energy
        for label, kmeans in implementations if with_before else implementations[1:]:
            started = time.perf_counter()
            centroids, codes = kmeans(job["latents"], job["k"], seed=0)
            seconds[label] += time.perf_counter() - started
            squared[label] += _relative_error(job, centroids, codes) * layer_energy
    row = {
        "after_seconds": seconds["after"],
        "after_relative_error": squared["after"] / energy,
    }
    if with_before:
        row.update(
            before_seconds=seconds["before"],
            before_relative_error=squared["before"] / energy,
            speedup=seconds["before"] / seconds["after"],
            error_ratio=squared["after"] / squared["before"],
        )
    return row


_BUSY = "import torch\na = torch.randn(1024, 1024)\nwhile True:\n    a = torch.tanh(a @ a * 1e-3)\n"


def kmeans_contended(jobs: list[dict], repeats: int) -> dict:
    """Before and after on mid-size layers while another torch process keeps both cores busy
    (a second search or worker on the machine): intra-op threads wait on descheduled threads."""
    busy = subprocess.Popen([sys.executable, "-c", _BUSY])
    try:
        time.sleep(2.0)  # the competitor is running
        chosen = [job for job in jobs if 20_000 <= job["latents"].shape[0] <= 70_000][:3]
        seconds: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(repeats):
            for label, kmeans in (("before", before.kmeans), ("after", after.kmeans)):
                started = time.perf_counter()
                for job in chosen:
                    kmeans(job["latents"], job["k"], seed=0)
                seconds[label].append(time.perf_counter() - started)
    finally:
        busy.kill()
        busy.wait()
    ratios = [b / a for b, a in zip(seconds["before"], seconds["after"], strict=True)]
    return {
        "layers": [job["name"] for job in chosen],
        "subvectors": sum(job["latents"].shape[0] for job in chosen),
        "before_seconds": _spread(seconds["before"]),
        "after_seconds": _spread(seconds["after"]),
        "speedup": _spread(ratios),
    }


def _errors_before(flat, scale, bits):
    """The bits proxy's clip-search error as it was: one new tensor per operation."""
    return (
        (quantizers._dequantize(quantizers._codes(flat, scale, bits), scale, bits) - flat)
        .square()
        .sum(dim=1)
    )


def proxy_side_by_side(spec: str, repeats: int) -> dict:
    """The proxy table of every option on `spec`, clip search as it was and as it is, A B A B."""
    loaded = load_model(spec, pretrained=False)
    model = loaded.module.eval()
    graph = discover(model, loaded.example_inputs, model_name=spec)
    options = layer_options(SearchSpace(graph, protect_ends=True))
    now = quantizers._squared_errors
    seconds: dict[str, list[float]] = {"before": [], "after": []}
    tables = {}
    for _ in range(repeats):
        for label, errors in (("before", _errors_before), ("after", now)):
            quantizers._squared_errors = errors
            try:
                started = time.perf_counter()
                tables[label] = proxy_table(model, options)
                seconds[label].append(time.perf_counter() - started)
            finally:
                quantizers._squared_errors = now
    difference = max(
        float(abs(tables["before"].relative_errors[n] - tables["after"].relative_errors[n]).max())
        for n in options
    )
    ratios = [b / a for b, a in zip(seconds["before"], seconds["after"], strict=True)]
    return {
        "layers": len(options),
        "options": sum(len(o) for o in options.values()),
        "before_seconds": _spread(seconds["before"]),
        "after_seconds": _spread(seconds["after"]),
        "speedup": _spread(ratios),
        "largest_difference_in_relative_error": difference,
    }


def _timed(label: str, stages: dict, function):
    started = time.perf_counter()
    result = function()
    stages[label] = time.perf_counter() - started
    print(f"  {label:<22} {stages[label]:7.2f} s", flush=True)
    return result


def problem_stages(spec: str) -> dict:
    """Seconds of each stage of a search's set-up and of an apply, on `spec`."""
    stages: dict[str, float] = {}
    loaded = load_model(spec, pretrained=False)
    model, inputs = loaded.module.eval(), loaded.example_inputs
    with tempfile.TemporaryDirectory() as cache:
        os.environ["COMPPLAN_CACHE_DIR"] = cache
        _timed("discover (fresh)", stages, lambda: discover(model, inputs, model_name=spec))
        graph = _timed(
            "discover (cached)", stages, lambda: discover(model, inputs, model_name=spec)
        )
    space = SearchSpace(graph, protect_ends=True)
    options = _timed("options", stages, lambda: layer_options(space))
    sensitivities = _timed(
        "sensitivities", stages, lambda: layer_sensitivities(model, [inputs], list(graph.layers))
    )
    table = _timed(
        "proxy table", stages, lambda: proxy_table(model, options, sensitivities=sensitivities)
    )
    _timed("proxy objective", stages, lambda: ProxyObjective(model, space, table, options))
    _timed("study space", stages, lambda: StudySpace(space, options, table))
    plan = make_preset(graph, "pqf-small", model=spec)
    _timed(
        "apply pqf-small",
        stages,
        lambda: apply_plan_(model, plan, example_inputs=inputs, config=ApplyConfig(progress=False)),
    )
    return {
        "layers": len(graph.layers),
        "options": sum(len(o) for o in options.values()),
        "seconds": stages,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="zoo:resnet50")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before-repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats

    loaded = load_model(args.model, pretrained=False)
    model, inputs = loaded.module.eval(), loaded.example_inputs
    graph = discover(model, inputs, model_name=args.model)
    plan = make_preset(graph, "pqf-small", model=args.model)
    jobs = vq_jobs(model, graph, plan)
    if args.quick:
        jobs = jobs[:20]
    points = sum(job["latents"].shape[0] for job in jobs)
    print(f"{args.model}: k-means of {len(jobs)} VQ layers, {points:,} subvectors", flush=True)

    kmeans_rows = []
    for repeat in range(repeats):
        row = kmeans_side_by_side(jobs, with_before=repeat < args.before_repeats)
        kmeans_rows.append(row)
        shown = ", ".join(f"{key} {value:.4g}" for key, value in row.items())
        print(f"  repeat {repeat + 1}: {shown}", flush=True)
    timed_before = [row for row in kmeans_rows if "speedup" in row]
    kmeans_summary = {
        "after_seconds": _spread([row["after_seconds"] for row in kmeans_rows]),
        "before_seconds": _spread([row["before_seconds"] for row in timed_before]),
        "speedup": _spread([row["speedup"] for row in timed_before]),
        "error_ratio": _spread([row["error_ratio"] for row in timed_before]),
    }
    print("k-means with another process busy on the cores:", flush=True)
    contended = kmeans_contended(jobs, repeats)
    print(
        f"  {contended['before_seconds']['median']:.1f} s before, "
        f"{contended['after_seconds']['median']:.1f} s after "
        f"(speedup ×{contended['speedup']['median']:.1f})",
        flush=True,
    )
    print("proxy table, clip search before and after:", flush=True)
    proxy = proxy_side_by_side(args.model, repeats)
    print(
        f"  {proxy['before_seconds']['median']:.1f} s before, "
        f"{proxy['after_seconds']['median']:.1f} s after (speedup ×{proxy['speedup']['median']:.2f}"
        f", largest difference {proxy['largest_difference_in_relative_error']:.1e})",
        flush=True,
    )
    print("stages (new code):", flush=True)
    stages = problem_stages(args.model)

    result = {
        "model": args.model,
        "quick": args.quick,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "vq_layers": len(jobs),
        "subvectors": points,
        "kmeans": kmeans_summary,
        "kmeans_repeats": kmeans_rows,
        "kmeans_contended": contended,
        "proxy_table": proxy,
        "stages": stages,
    }
    print(
        f"k-means: {kmeans_summary['before_seconds']['median']:.1f} s before, "
        f"{kmeans_summary['after_seconds']['median']:.1f} s after "
        f"(speedup ×{kmeans_summary['speedup']['median']:.1f}, error ratio "
        f"{kmeans_summary['error_ratio']['median']:.3f})"
    )
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
