"""Bits buy latency on ONNX Runtime: a searched plan against "uniform int8, then pruned until it
fits", at one latency and size budget, each exported and measured, then applied and scored.

    .venv/bin/python scripts/bench_bits_latency.py [--models zoo:resnet18 zoo:mnist1d]
                                                   [--latency 0.6] [--size 8] [--trials 200]

Needs the records `scripts/bench_runtime_latency.py` wrote (benchmarks/records/onnxruntime/).
For each model (onnxruntime, 1 thread, batch 1):
1. The latency predictor: the network fit on the model's build records.
2. Baseline: `bits:8+act:8` with every group's keep lowered from 1 in steps of 0.05 until it is
   within the size budget (1/`--size` of fp32, by the size model) and its structure, exported
   and measured, within the latency budget (×`--latency` of the uncompressed model).
3. Searched: `compplan search` at both budgets (`--trials` proxy trials, `--verify 3`: the three
   best plans measured on the runtime, the best one within the budget kept); where none is, the
   search again at the tighter latency budget it suggests, as a user would (up to 3 searches).
4. Both applied as a user would: zoo:resnet18 (random weights, no data) data-free (`--no-data`:
   inputs synthesized from its BatchNorm statistics, 0 epochs), scored by the output KL to the
   original on 64 generated N(0, 1) inputs; zoo:mnist1d with its data and 2 fine-tune epochs,
   scored by test accuracy.
5. Both exported to ONNX and the files measured against the uncompressed model's
   (`planner.onnx_job.file_latency_check`).
Prints everything and writes benchmarks/results/bits_latency.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from planner.compress import CompressionJob
from planner.measure import measure_plan_latency
from planner.onnx_job import export_onnx_file, file_latency_check
from planner.presets import make_preset
from planner.search import Planner
from planner.verify import LatencyMiss
from predictors.latency import load_records, make_predictor
from predictors.profile import device_fingerprint
from predictors.size import size_report
from search_spaces import Budget, discover
from search_spaces.model_spec import load_model

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "benchmarks" / "records" / "onnxruntime"
RESULT = ROOT / "benchmarks" / "results" / "bits_latency.json"
SETTINGS = {
    "zoo:resnet18": {"data_free": True, "epochs": 0, "synthetic_samples": 32},
    "zoo:mnist1d": {"data_free": False, "epochs": 2},
}


def predictor_of(model: str):
    name = model.replace(":", "_")
    records = pd.concat(
        [load_records(RECORDS / f"{name}_{part}.parquet") for part in ("build", "layers")],
        ignore_index=True,
    )
    return make_predictor("network").fit(records)


def baseline_plan(model: str, loaded, graph, budget_ratio: float, size_bytes: float) -> tuple:
    """(plan, keep, measured ratio, every keep tried): uniform int8, pruned until it fits both
    budgets (its size by the size model, its latency measured)."""
    tried = []
    keep = 1.0
    while keep > 0.2:
        name = "bits:8+act:8" if keep == 1.0 else f"bits:8+act:8+keep:{keep:g}"
        plan = make_preset(graph, name, model=model)
        size = size_report(plan, graph).total_bits / 8
        if size <= size_bytes:
            timing = measure_plan_latency(loaded.module, loaded.example_inputs, plan, graph=graph)
            tried.append(
                {"keep": keep, "size_bytes": size, "measured_ratio": timing.ratio,
                 "spread": timing.spread}
            )  # fmt: skip
            print(f"  baseline keep {keep:g}: measured ×{timing.ratio:.3f}", flush=True)
            if timing.ratio <= budget_ratio:
                return plan, keep, timing.ratio, tried
        keep = round(keep - 0.05, 2)
    raise SystemExit(f"{model}: uniform int8 misses the budgets even at keep 0.25")


def output_kl(model: str, cpz: Path) -> float:
    """Mean KL(original ‖ compressed) of the class distributions on 64 N(0, 1) inputs."""
    from engine.export import load

    original = load_model(model).module.eval()
    compressed = load(cpz).eval()
    shape = load_model(model).example_inputs[0].shape[1:]
    torch.manual_seed(0)
    x = torch.randn(64, *shape)
    with torch.no_grad():
        p = torch.log_softmax(original(x), dim=-1)
        q = torch.log_softmax(compressed(x), dim=-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def applied(model: str, plan, folder: Path, label: str) -> dict:
    plan_path = folder / f"{label}.json"
    plan.save(plan_path)
    cpz, onnx = folder / f"{label}.cpz", folder / f"{label}.onnx"
    started = time.perf_counter()
    result = CompressionJob(
        model_spec=model, plan_path=plan_path, out=cpz, progress=False, **SETTINGS[model]
    ).run()
    exported = export_onnx_file(cpz, onnx)
    check = file_latency_check(cpz, onnx)
    entry = {
        "apply_seconds": time.perf_counter() - started,
        "payload_bytes": result["payload_bytes"],
        "predicted_bytes": result["predicted_bytes"],
        "compression_ratio": result["compression_ratio"],
        "onnx_file_bytes": exported["file_bytes"],
        "kernels": sorted({layer["kernel"] for layer in exported["layers"].values()}),
        "file_latency": check,
        "int8_layers": sum(1 for lp in plan.layers.values() if lp.act_bits == 8),
        "low_bit_input_layers": sum(1 for lp in plan.layers.values() if lp.act_bits < 8),
        "pruned_groups": len({lp.keep for lp in plan.layers.values() if lp.keep < 1}),
    }
    if SETTINGS[model]["data_free"]:
        entry["output_kl"] = output_kl(model, cpz)
    else:
        entry["test_accuracy"] = result["score_after"]
        entry["test_accuracy_uncompressed"] = result["score_before"]
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["zoo:mnist1d", "zoo:resnet18"])
    parser.add_argument("--latency", type=float, default=0.6)
    parser.add_argument("--size", type=float, default=8.0)
    parser.add_argument("--trials", type=int, default=200)
    args = parser.parse_args()
    results = {
        "cpu": device_fingerprint("cpu", 1)["cpu"],
        "runtime": "onnxruntime",
        "latency_budget_ratio": args.latency,
        "size_budget_ratio": args.size,
        "trials": args.trials,
        "models": {},
    }
    if RESULT.exists():  # other models' figures of an earlier run are kept
        results["models"] = json.loads(RESULT.read_text()).get("models", {})
    for model in args.models:
        print(model, flush=True)
        loaded = load_model(model)
        graph = discover(loaded.module, loaded.example_inputs, model_name=model)
        predictor = predictor_of(model)
        reference_ms = predictor.reference_ms(graph)[0]
        budget = Budget(
            size_bytes=graph.baseline_bits / 8 / args.size, latency_ms=args.latency * reference_ms
        )
        plan, keep, ratio, tried = baseline_plan(
            model, loaded, graph, args.latency, budget.size_bytes
        )
        with tempfile.TemporaryDirectory() as scratch:
            started = time.perf_counter()
            searched_budgets = []
            for _ in range(3):  # as a user told "search again with --latency-budget x…" does
                searched_budgets.append(budget.latency_ms / reference_ms)
                planner = Planner(
                    loaded.module, loaded.example_inputs, graph=graph, budget=budget,
                    latency=predictor, storage=f"sqlite:///{scratch}/studies.db",
                    model_spec=model, verify=3, runtime="onnxruntime",
                )  # fmt: skip
                try:
                    outcome = planner.run(args.trials)
                    break
                except LatencyMiss as miss:
                    print(f"  {miss}", flush=True)
                    budget = replace(budget, latency_ms=miss.suggested_ratio * reference_ms)
            else:
                raise SystemExit(f"{model}: no plan measured within the budget in 3 searches")
            search_seconds = time.perf_counter() - started
            searched = applied(model, outcome.plan, Path(scratch), "searched")
            base = applied(model, plan, Path(scratch), "baseline")
        searched |= {
            "search_seconds": search_seconds,
            "searched_budget_ratios": searched_budgets,
            "verified": [c.to_dict() for c in outcome.verified or []],
            "predicted_ratio": outcome.evaluation.latency_ms / reference_ms,
        }
        base |= {"keep": keep, "measured_structure_ratio": ratio, "keeps_tried": tried}
        results["models"][model] = {"searched": searched, "baseline": base}
        print(json.dumps({model: results["models"][model]}, indent=1), flush=True)
        RESULT.write_text(json.dumps(results, indent=1))
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
