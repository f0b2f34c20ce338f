"""Latency repair: a search under a latency budget below the uncompressed model's, with and
without it, side by side.

    .venv/bin/python scripts/bench_latency_repair.py [--model zoo:digits] [--records FILE]
                                                     [--trials 60] [--seeds 3]

A predictor is fit (network) on `--records` (default: `compplan profile`'s 20 random plans of
the model and its structured ones, measured here and saved under benchmarks/records/). Then, for
each budget case (a size budget and a latency budget as a ratio of the uncompressed model's
predicted latency), TPE runs `--trials` proxy trials per seed in two arms, interleaved seed by
seed: size repair only (what the search did before) and size then latency repair (now). Reported
per case and arm: the share of feasible trials, the best feasible proxy (median and range over
seeds) and the seconds per trial, the latter as the ratio of the two arms (this machine's speed
moves in phases). Prints the figures and writes them to benchmarks/results/latency_repair.json,
under the model's name.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import optuna

from planner import Planner
from planner.budgets import parse_latency, parse_size
from predictors.latency import fit_predictor, load_records, profile, save_records
from search_spaces import Budget
from search_spaces.discover import discover
from search_spaces.model_spec import load_model

ROOT = Path(__file__).resolve().parents[1]
# (--size-budget or None, --latency-budget), as a user writes them.
CASES = {
    "zoo:digits": [("x25", "x0.5"), (None, "x0.7")],
    "zoo:resnet18": [("1.2MiB", "x0.5"), (None, "x0.7")],
}


def _records(model: str, path: Path | None):
    if path is not None:
        return load_records(path)
    out = ROOT / "benchmarks" / "records" / f"latency_repair_{model.replace(':', '_')}.parquet"
    if out.exists():
        return load_records(out)
    print(f"profiling {model} (20 random plans and the structured ones) …", flush=True)
    records = profile(model, samples=20, progress=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_records(records, out)
    return records


def _search(model, loaded, budget, predictor, seed, trials, latency_repair: bool) -> dict:
    planner = Planner(
        loaded.module,
        loaded.example_inputs,
        model_spec=model,
        budget=budget,
        storage="memory",
        latency=predictor,
        seed=seed,
        protect_ends=False,
    )
    if not latency_repair:
        # Size repair alone (the chain's first link), or none without a size budget.
        repair = planner.backend.repair
        planner.backend.repair = repair.repairs[0] if budget.size_bytes is not None else None
    started = time.perf_counter()
    result = planner.search(n_trials=trials)
    seconds = time.perf_counter() - started
    trials_frame = result.trials
    feasible = trials_frame[trials_frame["feasible"]]
    return {
        "feasible_share": float(trials_frame["feasible"].mean()),
        "best_proxy": float(feasible["value"].min()) if len(feasible) else None,
        "seconds_per_trial": seconds / len(trials_frame),
    }


def _summary(runs: list[dict]) -> dict:
    proxies = [r["best_proxy"] for r in runs if r["best_proxy"] is not None]
    return {
        "feasible_share": statistics.median(r["feasible_share"] for r in runs),
        "best_proxy": {
            "median": statistics.median(proxies) if proxies else None,
            "min": min(proxies, default=None),
            "max": max(proxies, default=None),
            "seeds_with_none": len(runs) - len(proxies),
        },
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="zoo:digits", choices=list(CASES))
    parser.add_argument("--records", type=Path, help="latency records of the model")
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    predictor = fit_predictor(_records(args.model, args.records), "network", holdout=0).predictor
    loaded = load_model(args.model)
    graph = discover(loaded.module, loaded.example_inputs, model_name=args.model)
    reference_ms, _ = predictor.reference_ms(graph)
    result: dict = {"model": args.model, "trials": args.trials, "cases": []}
    for size_text, latency_text in CASES[args.model]:
        size = parse_size(size_text, graph.baseline_bits / 8) if size_text else None
        budget = Budget(size_bytes=size, latency_ms=parse_latency(latency_text, reference_ms))
        arms: dict[str, list[dict]] = {"size_repair_only": [], "with_latency_repair": []}
        for seed in range(args.seeds):
            for arm in arms:
                arms[arm].append(
                    _search(
                        args.model,
                        loaded,
                        budget,
                        predictor,
                        seed,
                        args.trials,
                        arm != "size_repair_only",
                    )
                )
        before, now = arms["size_repair_only"], arms["with_latency_repair"]
        case = {
            "size_budget": size_text,
            "latency_budget": latency_text,
            "size_bytes": size,
            "latency_ms": budget.latency_ms,
            "arms": {arm: _summary(runs) for arm, runs in arms.items()},
            "seconds_per_trial_ratio": statistics.median(
                n["seconds_per_trial"] / b["seconds_per_trial"]
                for n, b in zip(now, before, strict=True)
            ),
        }
        result["cases"].append(case)
        _print(case)
    out = ROOT / "benchmarks" / "results" / "latency_repair.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    # One file for every model run: each run replaces its own model's entry.
    every = json.loads(out.read_text()) if out.exists() else {}
    every[args.model] = result
    out.write_text(json.dumps(every, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


def _print(case: dict) -> None:
    size = case["size_budget"] or "no size budget"
    print(f"latency {case['latency_budget']} ({case['latency_ms']:.3f} ms), size {size}:")
    for arm, s in case["arms"].items():
        p = s["best_proxy"]
        best = "none feasible" if p["median"] is None else f"{p['median']:.4g} "
        if p["median"] is not None:
            best += f"({p['min']:.4g}–{p['max']:.4g})"
        print(f"  {arm:20s} feasible {s['feasible_share']:.0%}   best proxy {best}")
    print(f"  seconds per trial, with over without: ×{case['seconds_per_trial_ratio']:.2f}")


if __name__ == "__main__":
    main()
