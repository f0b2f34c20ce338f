"""The planner on the proxy: optimality gap of TPE and NSGA-II, the exact solver's time, and the
planner's overhead per trial.

    .venv/bin/python scripts/bench_planner.py [--trials 1000] [--models resnet18,resnet50]
                                              [--overhead-trials 1000] [--seeds 1]

- Spaces: zoo:resnet18 and zoo:resnet50 (1×3×224×224), every layer searchable (first conv and
  classifier included, as PQF compresses them), keep 1 and 32-bit activations, so that the proxy
  is separable and the exact solver's answer is the true optimum. Size budgets 1/20 and 1/40 of
  fp32.
- Gap: the best feasible proxy after 100, 300 and 1000 trials, relative to the exact optimum
  (0 = optimal), without the exact seed, per seed; medians over seeds. TPE, NSGA-II and random
  search with budget repair (the planner's default, `planner.repair`), and TPE and NSGA-II
  without it (the sampler meets the budget from constraint values alone).
- Exact: the solver's wall time per model and budget (median of 3).
- Overhead: seconds per trial outside the objective (ask, repair, decode, size, constraints,
  tell, the storage write), on ResNet-18 at 20×, over the last 100 of `--overhead-trials` trials,
  for TPE and NSGA-II and for in-memory, journal-file and SQLite storage; median and quartiles,
  and the sampler's share (its `ask`).

- Digits (`--digits`, about 10 minutes): at 30× and 45×, the planned plan (TPE seeded by the
  exact solver, then the 4 best by proxy and the exact solver's balanced plans at caps 4 and 2
  fine-tuned 2 epochs on validation data), random search with the same trials and refinement,
  and the uniform PQ plan at the planned plan's size (the largest power-of-two k that fits); each
  applied with the same 3 epochs of distillation; test accuracy, seeds 0–2.

Prints everything and writes benchmarks/results/planner.json (planner_digits.json for
`--digits`). The models' weights are their
random initialisation (no downloads); the proxy's sensitivities come from one random input.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from planner import Planner
from search_spaces import Budget, discover
from search_spaces.model_spec import load_model

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = (100, 300, 1000)


# Every layer searchable, keep 1 and fp32 activations: the proxy is separable, so the exact
# solver's answer is the true optimum.
KNOBS = {"keep": (1.0,), "act_bits": (32,), "lr_mult": (1.0,)}


def _planner(loaded, graph, ratio, **options) -> Planner:
    return Planner(
        loaded.module,
        loaded.example_inputs,
        graph=graph,
        knobs=KNOBS,
        protect_ends=False,
        budget=Budget(size_bytes=graph.baseline_bits / 8 / ratio),
        model_spec=graph.model_name,
        **options,
    )


def _best_after(trials, n: int) -> float | None:
    first = trials[trials["number"] < n]
    feasible = first[first["feasible"].fillna(False).astype(bool)]
    return None if feasible.empty else float(feasible["value"].min())


def _gap(loaded, graph, ratio, args, seeds) -> dict:
    reference = _planner(loaded, graph, ratio, storage="memory")
    exact = reference.exact()
    times = [exact["seconds"]] + [reference.exact()["seconds"] for _ in range(2)]
    entry = {
        "exact_proxy": exact["proxy"],
        "exact_seconds": statistics.median(times),
        "exact_size_bytes": exact["size_bytes"],
        "parameters": reference.study_space.size,
        "options": sum(len(f) for f in reference.study_space.frontier.values()),
    }
    variants = {
        "tpe": ("tpe", True),
        "nsga2": ("nsga2", True),
        "random": ("random", True),
        "tpe_no_repair": ("tpe", False),
        "nsga2_no_repair": ("nsga2", False),
    }
    for label, (sampler, repair) in variants.items():
        runs = []
        for seed in seeds:
            planner = _planner(
                loaded,
                graph,
                ratio,
                storage="memory",
                sampler=sampler,
                seed=seed,
                seed_exact=False,
                repair=repair,
            )
            start = time.perf_counter()
            result = planner.search(n_trials=args.trials)
            seconds = time.perf_counter() - start
            gaps = {}
            for n in CHECKPOINTS:
                if n <= args.trials:
                    best = _best_after(result.trials, n)
                    gaps[str(n)] = None if best is None else best / exact["proxy"] - 1
            runs.append({"seed": seed, "gap": gaps, "seconds": seconds})
            shown = ", ".join(f"{n}: {g:.2%}" for n, g in gaps.items() if g is not None)
            print(
                f"  {graph.model_name} ×{ratio:g} {label} seed {seed}: "
                f"gap {shown} ({seconds:.0f} s)"
            )
        entry[label] = {
            "runs": runs,
            "median_gap": {
                n: statistics.median(r["gap"][n] for r in runs if r["gap"].get(n) is not None)
                if any(r["gap"].get(n) is not None for r in runs)
                else None
                for n in runs[0]["gap"]
            },
        }
    return entry


def _overhead(loaded, graph, args) -> dict:
    result = {}
    with tempfile.TemporaryDirectory() as folder:
        for sampler in ("tpe", "nsga2"):
            storages = {
                "memory": "memory",
                "journal": f"journal:{folder}/{sampler}.log",
                "sqlite": f"sqlite:///{folder}/{sampler}.db",
            }
            for name, url in storages.items():
                planner = _planner(
                    loaded, graph, 20, storage=url, sampler=sampler, seed_exact=False
                )
                timings = planner.search(n_trials=args.overhead_trials).timings.tail(100)
                overhead = (timings["seconds"] - timings["objective_seconds"]) * 1000
                sampler_ms = timings["ask_seconds"] * 1000
                objective = timings["objective_seconds"] * 1000
                q1, median, q3 = np.percentile(overhead, [25, 50, 75])
                result[f"{sampler}_{name}"] = {
                    "overhead_ms_median": float(median),
                    "overhead_ms_iqr": [float(q1), float(q3)],
                    "sampler_ms_median": float(np.median(sampler_ms)),
                    "objective_ms_median": float(np.median(objective)),
                    "trials": args.overhead_trials,
                }
                print(
                    f"  {sampler}, {name} storage, at trial {args.overhead_trials}: overhead "
                    f"{median:.1f} ms (IQR {q1:.1f}–{q3:.1f}), of which the sampler "
                    f"{np.median(sampler_ms):.1f} ms; objective {np.median(objective):.2f} ms",
                    flush=True,
                )
    return result


def _digits(args) -> dict:
    from planner.compress import CompressionJob
    from planner.presets import uniform_pq_at_size
    from planner.real import RealObjective
    from predictors.size import size_report
    from zoo.tasks import get_task

    loaded = load_model("zoo:digits")
    graph = discover(loaded.module, loaded.example_inputs, model_name="zoo:digits")
    task = get_task("digits")
    result: dict = {"uncompressed_test_accuracy": task.score(loaded.module), "runs": []}
    with tempfile.TemporaryDirectory() as folder:
        for ratio in (30.0, 45.0):
            for seed in range(args.seeds):
                row = {"ratio": ratio, "seed": seed}
                budget = Budget(size_bytes=graph.baseline_bits / 8 / ratio)
                plans = {}
                for label, sampler in (("planned", "tpe"), ("random", "random")):
                    planner = Planner(
                        loaded.module,
                        loaded.example_inputs,
                        budget=budget,
                        storage="memory",
                        sampler=sampler,
                        seed=seed,
                        seed_exact=label == "planned",
                        calibration=[task.calibration()],
                        model_spec="zoo:digits",
                    )
                    planner.search(n_trials=args.digits_trials)
                    real = RealObjective(
                        loaded.module, loaded.example_inputs, task, epochs=2, seed=seed
                    )
                    plans[label] = planner.refine(real, candidates=4)["plan"]
                size = size_report(plans["planned"], graph).size_bytes
                plans["uniform"] = uniform_pq_at_size(graph, size, model="zoo:digits")
                for label, plan in plans.items():
                    path = Path(folder) / f"{label}.json"
                    plan.save(path)
                    job = CompressionJob(
                        "zoo:digits",
                        plan_path=path,
                        out=Path(folder) / f"{label}.cpz",
                        seed=seed,
                        progress=False,
                    ).run()
                    row[label] = {
                        "test_accuracy": job["accuracy_after"],
                        "bytes": job["predicted_bytes"],
                    }
                print(
                    f"  digits ×{ratio:g} seed {seed}: "
                    + ", ".join(
                        f"{k} {v['test_accuracy']:.2%} ({v['bytes'] / 1024:.1f} KiB)"
                        for k, v in row.items()
                        if isinstance(v, dict)
                    ),
                    flush=True,
                )
                result["runs"].append(row)
    for ratio in (30.0, 45.0):
        runs = [r for r in result["runs"] if r["ratio"] == ratio]
        result[f"x{ratio:g}"] = {
            label: statistics.median(r[label]["test_accuracy"] for r in runs)
            for label in ("planned", "random", "uniform")
        }
        result[f"x{ratio:g}"]["planned_minus_uniform_points"] = [
            100 * (r["planned"]["test_accuracy"] - r["uniform"]["test_accuracy"]) for r in runs
        ]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--ratios", default="20,40")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--overhead-trials", type=int, default=1000)
    parser.add_argument("--digits", action="store_true", help="only the digits comparison")
    parser.add_argument("--digits-trials", type=int, default=300)
    args = parser.parse_args()
    if args.digits:
        args.seeds = max(args.seeds, 3)
        digits = _digits(args)
        out = ROOT / "benchmarks" / "results" / "planner_digits.json"
        out.write_text(json.dumps(digits, indent=2) + "\n")
        print(json.dumps({k: v for k, v in digits.items() if k != "runs"}, indent=2))
        print(f"wrote {out.relative_to(ROOT)}")
        return
    torch.manual_seed(0)
    torch.set_num_threads(1)
    result: dict = {"trials": args.trials, "gap": {}}
    seeds = list(range(args.seeds))
    for name in args.models.split(","):
        loaded = load_model(f"zoo:{name}", pretrained=False)
        graph = discover(loaded.module, loaded.example_inputs, model_name=f"zoo:{name}")
        for ratio in (float(r) for r in args.ratios.split(",")):
            print(f"{name} at ×{ratio:g}:", flush=True)
            result["gap"][f"{name}_x{ratio:g}"] = _gap(loaded, graph, ratio, args, seeds)
    loaded = load_model("zoo:resnet18", pretrained=False)
    graph = discover(loaded.module, loaded.example_inputs, model_name="zoo:resnet18")
    print("planner overhead per trial (objective excluded), zoo:resnet18 at ×20:", flush=True)
    result["overhead"] = _overhead(loaded, graph, args)
    out = ROOT / "benchmarks" / "results" / "planner.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
