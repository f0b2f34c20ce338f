"""Apply at real size: the plans a search picks, and every stage a user waits on, before and after.

    .venv/bin/python scripts/bench_apply_speed.py [--models LIST] [--trials 20] [--quick]

Per model (EfficientNet-B0 from a user's model file, ResNet-18, MobileNetV2, ResNet-50, MiniLM
and the seven zoo families; random initialisation; one torch thread; CPU seconds by
`time.process_time`, so another job on the machine slows the figures less than it would wall
time):

- the search's stages: discovery, the layer sensitivities, the planner's set-up (options,
  sensitivities, the proxy table of every option), and a proxy search of `--trials` trials at
  1/8 of the fp32 size with every layer searchable (`protect_ends=False`) and every knob of the
  default space: the plan a user gets from `compplan search --size-budget x8 --protect-ends no`;
- k-means of every VQ layer of that plan, the code as it was (`search_spaces/methods/lr2vq.py`
  at commit BEFORE, read from git) and as it is, one after the other on each layer's latents
  with the same seed (A B, so the machine's phase moves both alike): CPU seconds and relative
  reconstruction error ‖Ŵ − W‖²/‖W‖² per layer, and their totals;
- VQ of scalars (m = 1, k = 2^b) against b-bit weights (per-channel scale, clip search) for
  b = 2, 3, 4, 8 on every layer: how often each has the lower error, at what size ratio;
- the whole `apply_plan_` of the plan as it is now (calibrated on 32 random inputs);
- data-free synthesis of 4 inputs (`apply --no-data --synthetic 4`: 200 Adam steps), before
  (`engine/datafree.py` at BEFORE) and after, A B, with the BatchNorm-statistics loss each
  reaches, on the models `--synthesis` names (it costs minutes at 224×224).

Prints a table and writes benchmarks/results/apply_speed.json.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench_speed import _relative_error, vq_jobs  # scripts/ is on the path of a script run here

import engine.datafree as datafree_after
from planner import Planner
from planner.proxy import layer_sensitivities
from search_spaces import Budget, discover
from search_spaces.attention import layer_weight
from search_spaces.methods import lr2vq as lr2vq_after
from search_spaces.methods.quantizers import WeightQuantizer
from search_spaces.model_spec import load_model
from zoo import families

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "apply_speed.json"
# The last commit before k-means of scalars took the one-dimensional path.
BEFORE = "2041e51"
USER_MODEL = "benchmarks/models/efficientnet_b0.py:build"
SHAPES = {USER_MODEL: "1,3,224,224"}
MODELS = [USER_MODEL, "zoo:resnet18", "zoo:mobilenet_v2", "zoo:resnet50", "zoo:minilm"] + [
    f"zoo:{entry.name}" for entry in families.ENTRIES
]
SYNTHESIS = [USER_MODEL, "zoo:resnet18"]
_SYNTHETIC_INPUTS = 4
_COMPARED_BITS = (2, 3, 4, 8)


def module_before(path: str, name: str):
    """The module at `path` as it was at commit BEFORE (its source read from git)."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{BEFORE}:{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    exec(compile(source, f"{BEFORE}:{path}", "exec"), module.__dict__)
    return module


def _cpu(function):
    """(result, CPU seconds) of `function()`."""
    started = time.process_time()
    result = function()
    return result, time.process_time() - started


def _calibration(loaded, n: int) -> torch.Tensor:
    example = loaded.example_inputs[0]
    if example.dtype == torch.int64:  # token ids: repeat the example's, shifted
        return torch.stack([example[0].roll(i) for i in range(n)])
    generator = torch.Generator().manual_seed(1)
    return torch.randn((n, *example.shape[1:]), generator=generator)


def kmeans_before_after(jobs: list[dict], before) -> dict:
    """Each VQ layer's k-means, before then after, on the same latents and seed."""
    layers = []
    for job in jobs:
        row = {"layer": job["name"], "k": job["k"], "dim": job["latents"].shape[1]}
        row["points"] = job["latents"].shape[0]
        for label, kmeans in (("before", before.kmeans), ("after", lr2vq_after.kmeans)):
            started = time.process_time()
            centroids, codes = kmeans(job["latents"], job["k"], seed=0)
            seconds = time.process_time() - started
            row[f"{label}_seconds"] = seconds
            row[f"{label}_error"] = _relative_error(job, centroids, codes)
        row["error_ratio"] = row["after_error"] / max(row["before_error"], 1e-30)
        layers.append(row)
    before_s = sum(r["before_seconds"] for r in layers)
    after_s = sum(r["after_seconds"] for r in layers)
    ratios = sorted(r["error_ratio"] for r in layers) or [1.0]
    return {
        "layers": layers,
        "before_seconds": before_s,
        "after_seconds": after_s,
        "speedup": before_s / after_s if after_s else None,
        "error_ratio_worst": ratios[-1],
        "error_ratio_median": ratios[len(ratios) // 2],
        "layers_within_1pct": sum(r <= 1.01 for r in ratios),
    }


def scalar_vq_against_bits(model, planner) -> dict:
    """Per bit-width b: VQ of scalars (m = 1, k = 2^b) against b-bit weights, on every layer whose
    options hold both: how often VQ's error is the lower, and the medians of the error and size
    ratios (VQ / bits)."""
    found: dict[int, list[tuple[float, float]]] = {}
    for name, options in planner.problem.options.items():
        weight = layer_weight(model, name).detach().float()
        energy = float(weight.double().square().sum()) or 1.0
        sizes = {}
        for plan, size in zip(options.plans, options.bits, strict=True):
            config = plan.weights
            if plan.method == "vq" and config.m == 1:
                sizes[("vq", config.k)] = float(size)
            elif plan.method == "bits":
                sizes[("bits", config.bits)] = float(size)
        for b in _COMPARED_BITS:
            if ("vq", 2**b) not in sizes or ("bits", b) not in sizes:
                continue
            vq = lr2vq_after.lr2vq(weight, k=2**b, m=1)
            approx = lr2vq_after.decode(vq.codes, vq.codebook, vq.projection, vq.shape)
            vq_error = float((approx - weight).double().square().sum()) / energy
            with torch.no_grad():
                uniform = WeightQuantizer(weight, b)(weight)
            bits_error = float((uniform - weight).double().square().sum()) / energy
            size_ratio = sizes[("vq", 2**b)] / sizes[("bits", b)]
            found.setdefault(b, []).append((vq_error / max(bits_error, 1e-30), size_ratio))
    summary = {}
    for b, pairs in sorted(found.items()):
        errors, sizes = sorted(p[0] for p in pairs), sorted(p[1] for p in pairs)
        summary[str(b)] = {
            "layers": len(pairs),
            "vq_lower_error": sum(e < 1 for e in errors),
            "error_ratio_median": errors[len(errors) // 2],
            "size_ratio_median": sizes[len(sizes) // 2],
        }
    return summary


def synthesis_before_after(model, shape: tuple[int, ...], steps: int, before) -> dict:
    """Data-free synthesis of a few inputs, before then after, and the loss each reaches."""
    row = {}
    datafree_after.synthesize_batches(model, shape, n_samples=1, steps=2, progress=False)  # warm
    for label, module in (("before", before), ("after", datafree_after)):
        inputs, seconds = _cpu(
            lambda m=module: m.synthesize_batches(
                model, shape, n_samples=_SYNTHETIC_INPUTS, steps=steps, progress=False
            )
        )
        with torch.no_grad():
            row[f"{label}_loss"] = float(datafree_after.bn_statistics_loss(model, inputs))
        row[f"{label}_seconds"] = seconds
    row["speedup"] = row["before_seconds"] / row["after_seconds"]
    return row


def bench_model(spec: str, args, before_kmeans, before_datafree) -> dict:
    loaded = load_model(spec, input_shape=SHAPES.get(spec))
    model, inputs = loaded.module.eval(), loaded.example_inputs
    row: dict = {"model": spec, "cpu_seconds": {}}
    seconds = row["cpu_seconds"]
    graph, seconds["discover"] = _cpu(lambda: discover(model, inputs, model_name=spec))
    row["layers"], row["params"] = len(graph.layers), graph.total_params
    _, seconds["sensitivities"] = _cpu(
        lambda: layer_sensitivities(model, [inputs], list(graph.layers))
    )
    budget = Budget(size_bytes=graph.baseline_bits / 8 / 8)
    planner, seconds["planner_setup"] = _cpu(
        lambda: Planner(
            model, inputs, graph=graph, budget=budget, storage="memory", protect_ends=False
        )
    )
    result, seconds["search"] = _cpu(lambda: planner.search(n_trials=args.trials))
    plan = result.best_plan
    methods: dict[str, int] = {}
    for layer_plan in plan.layers.values():
        config = layer_plan.weights
        key = "dense" if config is None else _weights_key(layer_plan)
        methods[key] = methods.get(key, 0) + 1
    row["plan"] = dict(sorted(methods.items(), key=lambda kv: -kv[1]))
    jobs = vq_jobs(model, graph, plan)
    if args.quick:
        jobs = jobs[:5]
    row["kmeans"] = kmeans_before_after(jobs, before_kmeans)
    seconds["kmeans_before"] = row["kmeans"]["before_seconds"]
    seconds["kmeans_after"] = row["kmeans"]["after_seconds"]
    row["scalar_vq_vs_bits"] = scalar_vq_against_bits(model, planner)
    compressed = copy.deepcopy(model)
    _, seconds["apply"] = _cpu(
        lambda: _apply(compressed, plan, inputs, _calibration(loaded, 32), spec)
    )
    if spec in args.synthesis:
        steps = 20 if args.quick else 200
        row["synthesis"] = synthesis_before_after(
            model, tuple(inputs[0].shape), steps, before_datafree
        )
        seconds["synthesis_before"] = row["synthesis"]["before_seconds"]
        seconds["synthesis_after"] = row["synthesis"]["after_seconds"]
    return row


def _weights_key(layer_plan) -> str:
    """ "vq m=1 k=512"-like key of a layer's weights (VQ by m and k, others by method)."""
    config = layer_plan.weights
    if layer_plan.method == "vq":
        return f"vq d={config.clustering_dim} k={config.k}"
    return layer_plan.method


def _apply(model, plan, inputs, calibration, spec):
    from engine.apply import ApplyConfig, apply_plan_

    return apply_plan_(
        model,
        plan,
        calibration=calibration,
        example_inputs=inputs,
        config=ApplyConfig(progress=False),
        model_name=spec,
    )


def _print(row: dict) -> None:
    s = row["cpu_seconds"]
    k = row["kmeans"]
    line = (
        f"{row['model']:<44} disc {s['discover']:5.1f}  sens {s['sensitivities']:5.1f}  "
        f"setup {s['planner_setup']:5.1f}  search {s['search']:5.1f}  "
        f"k-means {k['before_seconds']:6.1f} → {k['after_seconds']:5.1f} s "
        f"(err ×{k['error_ratio_median']:.3f} median, ×{k['error_ratio_worst']:.3f} worst)  "
        f"apply {s['apply']:5.1f}"
    )
    if "synthesis" in row:
        y = row["synthesis"]
        line += f"  synthesis {y['before_seconds']:5.1f} → {y['after_seconds']:5.1f} s"
    print(line, flush=True)
    versus = row.get("scalar_vq_vs_bits", {})
    if versus:
        cells = [
            f"b={b}: {v['vq_lower_error']}/{v['layers']} lower, "
            f"error ×{v['error_ratio_median']:.2f} at size ×{v['size_ratio_median']:.3f}"
            for b, v in versus.items()
        ]
        print("    VQ m=1 k=2^b against b-bit weights: " + "; ".join(cells), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated specs")
    parser.add_argument("--trials", type=int, default=20, help="proxy trials of each search")
    parser.add_argument(
        "--synthesis", default=",".join(SYNTHESIS), help="models whose synthesis is timed"
    )
    parser.add_argument("--quick", action="store_true", help="5 largest VQ layers, 20 steps")
    args = parser.parse_args()
    args.synthesis = set(filter(None, args.synthesis.split(",")))
    os.chdir(ROOT)  # the user's model file is named from the project's root
    torch.set_num_threads(1)
    before_kmeans = module_before("search_spaces/methods/lr2vq.py", "lr2vq_before")
    before_datafree = module_before("engine/datafree.py", "datafree_before")
    rows = []
    for spec in filter(None, args.models.split(",")):
        try:
            rows.append(bench_model(spec, args, before_kmeans, before_datafree))
            _print(rows[-1])
        except Exception as error:  # one model's failure is a row, not the end of the run
            rows.append({"model": spec, "failure": f"{type(error).__name__}: {error}"})
            print(f"{spec}: FAILED {rows[-1]['failure']}", flush=True)
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model_name = next(
        (ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if "model name" in ln),
        platform.processor(),
    )
    document = {
        "machine": {"cpu": model_name, "torch": torch.__version__, "torch_threads": 1},
        "settings": {"trials": args.trials, "quick": args.quick, "before": BEFORE},
        "models": rows,
    }
    if not args.quick:
        RESULTS.write_text(json.dumps(document, indent=1) + "\n")
        print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
