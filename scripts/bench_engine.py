"""The engine on zoo:digits: accuracy after compression and fine-tuning, pruning speed, export.

    .venv/bin/python scripts/bench_engine.py [--seeds 3] [--epochs 9] [--quick]

Measures, side by side in one run (figures printed and written to
benchmarks/results/engine.json):
- uniform PQ and LR²VQ at about 20×, 40× and 80× (3 seeds each): the PQ setting (k, m) nearest each
  ratio from a grid, and the LR²VQ setting (d̃ < m) of the same grid whose size is closest to it
  without exceeding it; accuracy right after k-means and after distillation fine-tuning;
- 4-bit and 2-bit weights with 4-bit activations, and 1-bit weights (first conv and classifier at
  32 bits, as in every anchor);
- keep ratio 0.5 on every prunable coupling group: MACs and CPU latency before and after
  (batch 1 and batch 64, one thread, interleaved repeats: median and spread of the ratio);
- data-free fine-tuning (inputs synthesized from BatchNorm statistics) against real data at 20×;
- export and load for every kind: largest output difference and payload against prediction.
`--quick` runs one seed and two epochs (a smoke run, not the published figures).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from engine import ApplyConfig, FinetuneConfig, apply_plan_, export, finetune, load
from engine.datafree import synthesize_batches
from predictors.size import size_report
from search_spaces import BitsConfig, LayerPlan, N2UQConfig, Plan, VQConfig, discover
from zoo.digits import INPUT_SHAPE, pretrained_digits
from zoo.tasks import get_task

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "engine.json"
GRID_K = (16, 32, 64, 128, 256, 512, 1024)
GRID_M = ((9, 4), (18, 8), (36, 16))  # (m for 3×3 convs, m for 1×1 convs)
GRID_FRACTIONS = (0.25, 0.5, 0.75)


def inner_layers(graph) -> list[str]:
    return [n for n in graph.layers if n not in (graph.first_conv, graph.classifier)]


def vq_plan(graph, k: int, ms: tuple[int, int], fraction: float = 1.0) -> Plan:
    layers = {}
    for name in inner_layers(graph):
        m = ms[0] if graph.layers[name].kernel_elems == 9 else ms[1]
        layers[name] = LayerPlan(weights=VQConfig.from_fraction(k, m, fraction))
    return Plan(layers, model="zoo:digits", fingerprint=graph.fingerprint)


def uniform_plan(graph, *, weight_bits: int, act_bits: int = 32) -> Plan:
    layer = LayerPlan(
        weights=BitsConfig(bits=weight_bits),
        activations=N2UQConfig(bits=act_bits) if act_bits < 32 else None,
    )
    layers = dict.fromkeys(inner_layers(graph), layer)
    return Plan(layers, model="zoo:digits", fingerprint=graph.fingerprint)


def keep_plan(graph, keep: float) -> Plan:
    layers = {n: LayerPlan(keep=keep) for g in graph.groups if g.prunable for n in g.layers}
    return Plan(layers, model="zoo:digits", fingerprint=graph.fingerprint)


def keep_then_pq(graph) -> Plan:
    """Keep 0.5 on every prunable group, and PQ (k = 64, m = 9) on the inner 3×3 convs."""
    layers = dict(keep_plan(graph, 0.5).layers)
    for name in inner_layers(graph):
        if graph.layers[name].kernel_elems == 9:
            keep = layers.get(name, LayerPlan()).keep
            layers[name] = LayerPlan(weights=VQConfig(k=64, m=9), keep=keep)
    return Plan(layers, model="zoo:digits", fingerprint=graph.fingerprint)


def pick_vq_settings(graph, target: float) -> dict:
    """PQ nearest `target`×, and the LR²VQ setting closest in size without exceeding it."""

    def bits(plan: Plan) -> int:
        return size_report(plan, graph).total_bits

    pq = min(
        ((k, ms) for k in GRID_K for ms in GRID_M),
        key=lambda s: abs(graph.baseline_bits / bits(vq_plan(graph, *s)) - target),
    )
    pq_bits = bits(vq_plan(graph, *pq))
    lr = max(
        (
            (k, ms, f)
            for k in GRID_K
            for ms in GRID_M
            for f in GRID_FRACTIONS
            if bits(vq_plan(graph, k, ms, f)) <= pq_bits
        ),
        key=lambda s: bits(vq_plan(graph, *s)),
    )
    return {"pq": {"k": pq[0], "m": pq[1]}, "lr2vq": {"k": lr[0], "m": lr[1], "d_fraction": lr[2]}}


def compress(teacher, plan, *, seed, epochs, task, data=None, calibration=None, before=None):
    """Apply, then fine-tune; `before` (a list) collects the accuracy between the two."""
    student = copy.deepcopy(teacher)
    calibration = task.calibration() if calibration is None else calibration
    apply_plan_(
        student, plan, calibration=calibration, config=ApplyConfig(seed=seed, progress=False)
    )
    if before is not None:
        before.append(task.score(student))
    if data is None:
        data = task.train_batches(seed=seed)
    finetune(
        student,
        teacher,
        data,
        plan,
        config=FinetuneConfig(epochs=epochs, seed=seed, progress=False),
    )
    return student


def latency_ratio(before, after, batch: int, repeats: int = 7, calls: int = 200) -> dict:
    """Median time per call of each model, interleaved; the after/before ratio per repeat."""
    x = torch.rand(batch, *INPUT_SHAPE[1:])
    ratios, times_before, times_after = [], [], []
    with torch.no_grad():
        for model in (before, after):
            for _ in range(20):
                model(x)
        for _ in range(repeats):
            timings = []
            for model in (before, after):
                start = time.perf_counter()
                for _ in range(calls):
                    model(x)
                timings.append((time.perf_counter() - start) / calls)
            times_before.append(timings[0])
            times_after.append(timings[1])
            ratios.append(timings[1] / timings[0])
    return {
        "batch": batch,
        "before_ms": statistics.median(times_before) * 1e3,
        "after_ms": statistics.median(times_after) * 1e3,
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "repeats": repeats,
    }


def summary(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
        "runs": values,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=9, help="fine-tune epochs (PQF uses 9)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs: a smoke run")
    parser.add_argument(
        "--ratios", type=float, nargs="+", default=[20, 40, 80], help="VQ target ratios"
    )
    args = parser.parse_args()
    seeds = range(1 if args.quick else args.seeds)
    epochs = 2 if args.quick else args.epochs
    torch.set_num_threads(1)  # one thread: steadier timings on a shared 2-core machine

    task = get_task("digits")
    teacher = pretrained_digits(progress=False).eval()
    graph = discover(teacher, torch.zeros(INPUT_SHAPE), model_name="zoo:digits")
    baseline = task.score(teacher)
    print(f"zoo:digits uncompressed: test accuracy {baseline:.4f}, {graph.baseline_bits // 8:,} B")
    result: dict = {
        "model": "zoo:digits",
        "uncompressed_accuracy": baseline,
        "baseline_bytes": graph.baseline_bits // 8,
        "epochs": epochs,
        "seeds": len(seeds),
        "vq": {},
        "bits": {},
    }

    started = time.perf_counter()
    for target in args.ratios:
        settings = pick_vq_settings(graph, target)
        entry = {}
        for method, s in settings.items():
            plan = vq_plan(graph, s["k"], s["m"], s.get("d_fraction", 1.0))
            report = size_report(plan, graph)
            untuned: list[float] = []
            accuracies = [
                task.score(
                    compress(teacher, plan, seed=seed, epochs=epochs, task=task, before=untuned)
                )
                for seed in seeds
            ]
            entry[method] = {
                "accuracy_before_finetune": summary(untuned),
                "setting": s,
                "size_bytes": report.size_bytes,
                "ratio": report.compression_ratio,
                "accuracy": summary(accuracies),
                "drop_points": 100 * (baseline - statistics.fmean(accuracies)),
            }
            print(
                f"{target}×  {method:<6} {s}  {report.compression_ratio:5.1f}×  "
                f"{report.size_bytes:>7,} B  accuracy {statistics.fmean(accuracies):.4f} "
                f"(min {min(accuracies):.4f}, max {max(accuracies):.4f}); "
                f"before fine-tuning {statistics.fmean(untuned):.4f}"
            )
        result["vq"][f"{target:g}x"] = entry

    for label, knobs in {
        "w4a4": {"weight_bits": 4, "act_bits": 4},
        "w2a4": {"weight_bits": 2, "act_bits": 4},
        "w1": {"weight_bits": 1},
    }.items():
        plan = uniform_plan(graph, **knobs)
        report = size_report(plan, graph)
        untuned = []
        accuracies = [
            task.score(compress(teacher, plan, seed=seed, epochs=epochs, task=task, before=untuned))
            for seed in seeds
        ]
        result["bits"][label] = {
            "accuracy_before_finetune": summary(untuned),
            "ratio": report.compression_ratio,
            "accuracy": summary(accuracies),
        }
        print(
            f"{label:<5} {report.compression_ratio:5.1f}×  "
            f"accuracy {statistics.fmean(accuracies):.4f} "
            f"(min {min(accuracies):.4f}, max {max(accuracies):.4f}); "
            f"before fine-tuning {statistics.fmean(untuned):.4f}"
        )

    plan = keep_plan(graph, 0.5)
    pruned = copy.deepcopy(teacher)
    apply_plan_(
        pruned, plan, example_inputs=torch.zeros(INPUT_SHAPE), config=ApplyConfig(progress=False)
    )
    pruned_graph = discover(pruned, torch.zeros(INPUT_SHAPE))
    tuned = compress(teacher, plan, seed=0, epochs=epochs, task=task)
    result["keep_0.5"] = {
        "macs_before": graph.total_macs,
        "macs_after": pruned_graph.total_macs,
        "macs_ratio": pruned_graph.total_macs / graph.total_macs,
        "params_ratio": pruned_graph.total_params / graph.total_params,
        "accuracy_after_finetune": task.score(tuned),
        "latency": [latency_ratio(teacher, tuned.eval(), batch) for batch in (1, 64)],
    }
    k = result["keep_0.5"]
    print(
        f"keep 0.5: MACs ×{k['macs_ratio']:.3f}, params ×{k['params_ratio']:.3f}, accuracy "
        f"{k['accuracy_after_finetune']:.4f}"
    )
    for lat in k["latency"]:
        print(
            f"  batch {lat['batch']:>2}: {lat['before_ms']:.3f} → {lat['after_ms']:.3f} ms, ratio "
            f"{lat['ratio_median']:.3f} (min {lat['ratio_min']:.3f}, max {lat['ratio_max']:.3f})"
        )

    s = result["vq"]["20x"]["pq"]["setting"]
    plan = vq_plan(graph, s["k"], s["m"])
    free = []
    for seed in seeds:
        synthetic = synthesize_batches(
            teacher, INPUT_SHAPE, n_samples=512, seed=seed, progress=False
        )
        batches = list(torch.split(synthetic, 64))
        student = compress(
            teacher,
            plan,
            seed=seed,
            epochs=epochs,
            task=task,
            data=batches,
            calibration=synthetic[:256],
        )
        free.append(task.score(student))
    result["data_free_20x"] = {
        "setting": s,
        "data_free_accuracy": summary(free),
        "real_data_accuracy": result["vq"]["20x"]["pq"]["accuracy"],
    }
    print(
        f"20× PQ data-free accuracy {statistics.fmean(free):.4f} vs real data "
        f"{result['vq']['20x']['pq']['accuracy']['mean']:.4f}"
    )

    round_trips = {}
    kinds = {
        "pq": vq_plan(graph, 256, (9, 4)),
        "lr2vq": vq_plan(graph, 512, (18, 8), 0.5),
        "w4a4": uniform_plan(graph, weight_bits=4, act_bits=4),
        "w1": uniform_plan(graph, weight_bits=1),
        "keep0.5": keep_plan(graph, 0.5),
        "keep0.5+pq": keep_then_pq(graph),
    }
    x = task.splits.test_x
    with tempfile.TemporaryDirectory() as folder:
        for name, plan in kinds.items():
            student = copy.deepcopy(teacher)
            apply_plan_(
                student, plan, calibration=task.calibration(), config=ApplyConfig(progress=False)
            )
            report = export(
                student, Path(folder) / f"{name}.cpz", model_spec="zoo:digits", task="digits"
            )
            loaded = load(report.path)
            predicted = size_report(plan, graph).total_bits / 8
            with torch.no_grad():
                diff = (student(x) - loaded(x)).abs().max().item()
            round_trips[name] = {
                "max_abs_diff": diff,
                "payload_bytes": report.payload_bytes,
                "predicted_bytes": predicted,
                "padding_bytes": report.payload_bytes - predicted,
                "extra_bytes": report.extra_bytes,
                "file_bytes": report.file_bytes,
            }
            print(
                f"export {name:<11} max |Δ| {diff:.1e}  payload {report.payload_bytes:,} B = "
                f"predicted {predicted:,.0f} + "
                f"{report.payload_bytes - predicted:.0f}"
                f" padding; extra {report.extra_bytes} B; file {report.file_bytes:,} B"
            )
    result["export"] = round_trips
    result["seconds"] = time.perf_counter() - started
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
