"""Throughput of the exact size model: batched against one plan at a time, side by side.

    .venv/bin/python scripts/bench_size.py [--plans 2000] [--repeats 5]

For ResNet-50 (54 layers, 38 coupling groups) it samples random valid plans from the default
search space, then times, in one process and interleaved: `size_report` one plan at a time, the
batched `SizePredictor.predict` from Plan objects, and from a ready `PlanBatch` (what a search
that keeps its candidates as arrays pays). Prints medians and spreads and writes
benchmarks/results/size.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import optuna
import torch

from predictors.size import PlanBatch, SizePredictor, size_report
from search_spaces import SearchSpace, discover
from zoo.resnet import resnet50


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plans", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    graph = discover(resnet50().eval(), torch.randn(1, 3, 224, 224), model_name="zoo:resnet50")
    space = SearchSpace(graph)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    plans = []
    for _ in range(args.plans):
        trial = study.ask()
        plans.append(space.suggest(trial))
        study.tell(trial, 0.0)
    predictor = SizePredictor(graph)
    batch = PlanBatch.from_plans(graph, plans)
    single_sample = plans[: max(1, args.plans // 10)]  # one-by-one is slow; time a tenth

    runs: dict[str, list[float]] = {
        "one_by_one": [],
        "batched_from_plans": [],
        "batched_arrays": [],
    }
    for _ in range(args.repeats):
        t = _timed(lambda: [size_report(p, graph).total_bits for p in single_sample])
        runs["one_by_one"].append(len(single_sample) / t)
        runs["batched_from_plans"].append(len(plans) / _timed(lambda: predictor.predict(plans)))
        runs["batched_arrays"].append(len(plans) / _timed(lambda: predictor.predict(batch)))

    same = (
        predictor.predict_bits(plans).tolist()
        == [size_report(p, graph).total_bits for p in single_sample]
        + predictor.predict_bits(plans[len(single_sample) :]).tolist()
    )
    result = {
        "model": "zoo:resnet50",
        "layers": len(graph.layers),
        "groups": len(graph.groups),
        "plans": args.plans,
        "repeats": args.repeats,
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": 1},
        "batched_equals_one_by_one": same,
        "plans_per_second": {
            name: {"median": statistics.median(v), "min": min(v), "max": max(v)}
            for name, v in runs.items()
        },
    }
    base = result["plans_per_second"]["one_by_one"]["median"]
    result["speedup_vs_one_by_one"] = {
        name: result["plans_per_second"][name]["median"] / base
        for name in ("batched_from_plans", "batched_arrays")
    }
    for name, stats in result["plans_per_second"].items():
        print(
            f"{name:<20} {stats['median']:>12,.0f} plans/s  "
            f"(min {stats['min']:,.0f}, max {stats['max']:,.0f}, {args.repeats} runs)"
        )
    for name, ratio in result["speedup_vs_one_by_one"].items():
        print(f"{name} is {ratio:,.0f}× one plan at a time")
    print(f"batched sizes equal one-by-one sizes: {same}")
    out = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "size.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
