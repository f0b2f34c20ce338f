"""Latency on ONNX Runtime: predictors that learn kernel classes and their boundaries, scored on
held-out mixed plans, and the exact solver's answer measured on the runtime.

    .venv/bin/python scripts/bench_runtime_latency.py [--models zoo:mnist1d zoo:resnet18 ...]
                                                      [--samples 40] [--test 20] [--reuse]

For each model (1 thread, batch 1, onnxruntime):
1. Build, as a user does: `profile --runtime onnxruntime` with `--samples` plans (half random
   over the search space, half `kernel_mix_plans`: int8 regions, every second or third layer,
   single layers), the structured plans (uniform keeps with and without 8-bit inputs) and the
   int8 region plans (all, first half, second half, alternating); each exported to ONNX and
   timed against the uncompressed model's fp32 file. Single layers (for the lookup table): the
   uncompressed plan's layers alone at 32, 8 and 4-bit inputs. Its seconds (and the network's
   fit) are the build time.
2. Test plans, measured in another run: `--test` held-out plans (another seed, half random, half
   kernel mixes), and the structured plans users compare: int8 on all, the first half, the
   second half, every second layer; keep 0.5 with int8 everywhere; keep 0.65 fp32. (Structured
   plans of these kinds are among the build's, as `profile` measures them by default.)
3. Predictors fit on the build records, scored on the test plans' ratios: the network with
   neighbour features (each layer's kernel class and its neighbours'), the lookup table (layers
   measured alone, summed) and FLOPs; share within ±10%, MAPE.
4. Transfer: the network fit on every other model's build records and this model's uncompressed
   plan alone, scored on this model's test plans.
5. Solver (models with a `--budget` ratio): the exact solver's answer at that latency budget
   (beside `--size-budget`), with the predictor's additive part and re-solves; its prediction
   and its measured ratio on the runtime.
Records go to benchmarks/records/onnxruntime/ (`--reuse` takes them from there). Prints
everything and writes benchmarks/results/runtime_latency.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

from predictors.latency import (
    int8_region_plans,
    kernel_mix_plans,
    load_records,
    make_predictor,
    profile,
    profile_layers,
    random_plans,
    save_records,
    structured_plans,
)
from predictors.latency.features import plan_layer_configs
from predictors.latency.sampling import dense_plan
from predictors.profile import device_fingerprint
from search_spaces.discover import discover
from search_spaces.model_spec import load_model
from search_spaces.plan import Plan
from search_spaces.space import SearchSpace

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "benchmarks" / "records" / "onnxruntime"
RESULT = ROOT / "benchmarks" / "results" / "runtime_latency.json"
RUNTIME = "onnxruntime"


def _graph(model: str):
    loaded = load_model(model, pretrained=False)
    return loaded, discover(loaded.module, loaded.example_inputs, model_name=model)


def _cached(path: Path, reuse: bool, make) -> pd.DataFrame:
    if reuse and path.exists():
        return load_records(path)
    started = time.perf_counter()
    records = make()
    records.attrs["profile_seconds"] = time.perf_counter() - started
    save_records(records, path)
    (path.with_suffix(".seconds")).write_text(str(records.attrs["profile_seconds"]))
    return records


def _seconds(path: Path) -> float | None:
    file = path.with_suffix(".seconds")
    return float(file.read_text()) if file.exists() else None


def build_records(model: str, samples: int, reuse: bool) -> tuple[pd.DataFrame, float]:
    """The build's plan and layer records, and the seconds they took."""
    name = model.replace(":", "_")
    plans_path, layers_path = RECORDS / f"{name}_build.parquet", RECORDS / f"{name}_layers.parquet"
    plans = _cached(
        plans_path,
        reuse,
        lambda: profile(
            model, samples=samples, seed=0, layers=False, runtime=RUNTIME, progress=False
        ),
    )
    _, graph = _graph(model)
    space = SearchSpace(graph)
    low = min(b for c in space.layers.values() for b in c.act_bits)
    alone = [Plan(layers={}), *_uniform_act_plans(space, (8, low))]
    configs = plan_layer_configs(graph, alone).alone().unique()[0]

    def layer_records():
        frame = profile_layers(configs, source=model, runtime=RUNTIME, progress=False)
        frame["input_shape"] = "x".join(map(str, next(iter(graph.layers.values())).input_shape))
        return frame

    layers = _cached(layers_path, reuse, layer_records)
    seconds = (_seconds(plans_path) or 0.0) + (_seconds(layers_path) or 0.0)
    return pd.concat([plans, layers], ignore_index=True), seconds


def _uniform_act_plans(space, bits_list) -> list[Plan]:
    return [
        dense_plan(space, {n: bits for n, c in space.layers.items() if bits in c.act_bits})
        for bits in bits_list
    ]


def structured_test_plans(space) -> list[Plan]:
    """The structured plans users compare (module docstring, 2)."""
    regions = int8_region_plans(space, keep=1.0)
    keep_half_int8 = next(
        p
        for p in structured_plans(space, keeps=(0.5,))
        if p.provenance["source"].endswith("act_bits=8")
    )
    keep_65_fp32 = next(
        p
        for p in structured_plans(space, keeps=(0.65,))
        if p.provenance["source"].endswith("act_bits=32")
    )
    return [*regions, keep_half_int8, keep_65_fp32]


def test_records(model: str, count: int, reuse: bool) -> pd.DataFrame:
    _, graph = _graph(model)
    space = SearchSpace(graph)
    structured = structured_test_plans(space)
    mixed = kernel_mix_plans(space, count // 2, seed=1) + random_plans(
        space, count - count // 2, seed=1
    )
    path = RECORDS / f"{model.replace(':', '_')}_test.parquet"
    frame = _cached(
        path,
        reuse,
        lambda: profile(
            model,
            plans=mixed + structured,
            structured=False,
            layers=False,
            runtime=RUNTIME,
            progress=False,
        ),
    )
    frame["split"] = ["mixed"] * len(mixed) + ["structured"] * len(structured)
    frame["source"] = [json.loads(p)["provenance"].get("source", "") for p in frame["plan"]]
    return frame


def score(predicted: np.ndarray, measured: np.ndarray) -> dict:
    error = predicted / measured - 1
    return {
        "within_10pct": float(np.mean(np.abs(error) <= 0.10)),
        "mape": float(np.mean(np.abs(error))),
        "max_abs_error": float(np.max(np.abs(error))),
    }


def predicted_ratios(predictor, graph, frame: pd.DataFrame) -> np.ndarray:
    plans = [Plan.from_json(text) for text in frame["plan"]]
    return predictor.predict_ratio(graph, plans)


def fit_kinds(train: pd.DataFrame) -> dict:
    fitted, seconds = {}, {}
    for kind in ("network", "lookup", "flops"):
        started = time.perf_counter()
        fitted[kind] = make_predictor(kind).fit(train)
        seconds[kind] = time.perf_counter() - started
    return fitted, seconds


def solver_check(model: str, predictor, latency_ratio: float, size_ratio: float) -> dict:
    """The exact solver's answer at the budgets, predicted and measured on the runtime."""
    from planner.measure import measure_plan_latency
    from planner.search import Planner
    from search_spaces import Budget

    loaded, graph = _graph(model)
    reference_ms = predictor.reference_ms(graph)[0]
    budget = Budget(
        size_bytes=graph.baseline_bits / 8 / size_ratio, latency_ms=latency_ratio * reference_ms
    )
    planner = Planner(
        loaded.module,
        loaded.example_inputs,
        graph=graph,
        budget=budget,
        latency=predictor,
        storage="memory",
        model_spec=model,
    )
    answer = planner.exact()
    timing = measure_plan_latency(
        loaded.module, loaded.example_inputs, answer["plan"], graph=graph, runtime=RUNTIME
    )
    int8 = sum(1 for lp in answer["plan"].layers.values() if lp.act_bits == 8)
    return {
        "latency_budget_ratio": latency_ratio,
        "size_budget_ratio": size_ratio,
        "resolves": answer.get("resolves", 0),
        "predicted_ratio": answer["latency_ms"] / reference_ms,
        "measured_ratio": timing.ratio,
        "measured_spread": timing.spread,
        "int8_layers": int8,
        "layers": len(graph.layers),
        "feasible_predicted": bool(answer["feasible"]),
        "within_measured": timing.ratio <= latency_ratio * 1.05,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["zoo:mnist1d", "zoo:resnet18", "zoo:mobilenet_v2"]
    )
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--test", type=int, default=20)
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--budget", default="zoo:resnet18=0.6", help="MODEL=RATIO for the solver")
    args = parser.parse_args()
    RECORDS.mkdir(parents=True, exist_ok=True)
    fingerprint = device_fingerprint("cpu", 1)
    results: dict = {
        "cpu": fingerprint["cpu"],
        "machine": platform.machine(),
        "runtime": RUNTIME,
        "threads": 1,
        "samples": args.samples,
        "test": args.test,
        "models": {},
    }
    builds, tests = {}, {}
    for model in args.models:
        builds[model], seconds = build_records(model, args.samples, args.reuse)
        tests[model] = test_records(model, args.test, args.reuse)
        results["models"][model] = {"profile_seconds": seconds}
        print(f"{model}: {len(builds[model])} build records in {seconds:.0f} s", flush=True)
    budget_model, budget_ratio = args.budget.split("=")
    for model in args.models:
        entry = results["models"][model]
        _, graph = _graph(model)
        fitted, fit_seconds = fit_kinds(builds[model])
        entry["fit_seconds"] = fit_seconds
        entry["build_seconds"] = entry["profile_seconds"] + fit_seconds["network"]
        frame = tests[model]
        models = frame[frame["record"] == "model"]
        measured = models["ratio"].to_numpy(float)
        entry["predictors"] = {}
        for kind, predictor in fitted.items():
            predicted = predicted_ratios(predictor, graph, models)
            by_split = {
                split: score(predicted[(models["split"] == split).to_numpy()],
                             measured[(models["split"] == split).to_numpy()])
                for split in ("mixed", "structured")
            }  # fmt: skip
            entry["predictors"][kind] = by_split
            if kind == "network":
                mask = (models["split"] == "structured").to_numpy()
                entry["structured"] = [
                    {"plan": source, "measured": float(m), "predicted": float(p)}
                    for source, m, p in zip(
                        models["source"][mask], measured[mask], predicted[mask], strict=True
                    )
                ]
        # Transfer: every other model's build records, and this one's uncompressed plan alone.
        others = [builds[m] for m in args.models if m != model]
        if others:
            own = builds[model][builds[model]["record"] == "model"]
            uncompressed = own[own["plan"].map(lambda t: not json.loads(t).get("layers"))].head(1)
            transfer = make_predictor("network").fit(pd.concat([*others, uncompressed]))
            predicted = predicted_ratios(transfer, graph, models)
            mixed = (models["split"] == "mixed").to_numpy()
            entry["transfer"] = score(predicted[mixed], measured[mixed])
        if model == budget_model:
            entry["solver"] = solver_check(model, fitted["network"], float(budget_ratio), 8.0)
        print(json.dumps({model: entry}, indent=1), flush=True)
    RESULT.write_text(json.dumps(results, indent=1))
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
