"""Latency on a noisy machine: the relative protocol's noise floor beside the absolute one, and the
predictors (FLOPs, lookup table, network) scored on the ratio, side by side.

    .venv/bin/python scripts/bench_latency.py [--samples 60] [--synthetic 300] [--device cpu]
                                              [--threads 1] [--reuse] [--records DIR]

For zoo:resnet18 (1×3×224×224), zoo:mobilenet_v2 (1×3×224×224) and zoo:digits (1×1×8×8):
1. Build a predictor as a user does: `profile` `--samples` random plans, the structured ones
   (uniform keeps 0.35–1 with 32- and 8-bit activations) and their single layers, each plan timed
   interleaved with the uncompressed model (10 blocks of 3 calls each, `measure_relative`), in a
   fresh process; then fit. Its seconds are the build time.
2. Noise floor: a seeded 20% of the random plans, the structured plans and the presets (PQF
   small and large, 8- and 4-bit weights, with keeps) measured again in another fresh process.
   Share of plans whose second figure is within ±10% of the first, for the ratio (the new
   protocol) and for the absolute median of the same calls (what a figure was before).
3. Predictors fit on the other 80% of the random plans, the structured ones and the layers (plus
   the synthetic layers), scored on the held-out plans' ratios: share within ±10%, MAPE and
   Spearman's ρ. Structured plans and presets: each predicted against its second measurement
   (as `compplan measure-latency` would give it), by predictors fit with and without them.
4. Transfer: fit on resnet18 and digits (and the synthetic layers), scored on mobilenet_v2's plans.
5. Throughput: 10,000 plans of mobilenet_v2 (53 layers) from arrays, 5 repeats.
Records go to benchmarks/records/<device>/ (`--reuse` takes them from there). Prints everything
and writes benchmarks/results/latency.json (latency_<device>.json for a device other than cpu).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from planner.presets import make_preset
from predictors.latency import (
    LatencyBatch,
    load_records,
    make_predictor,
    profile,
    profile_layers,
    random_plans,
    record_graphs,
    save_records,
    structured_plans,
    synthetic_layer_configs,
)
from predictors.profile import RATIO_STATISTIC, device_fingerprint
from search_spaces import SearchSpace
from search_spaces.plan import Plan

MODELS = {
    "zoo:resnet18": "1x3x224x224",
    "zoo:mobilenet_v2": "1x3x224x224",
    "zoo:digits": "1x1x8x8",
}
KINDS = ("flops", "lookup", "network")
PRESETS = ("pqf-small", "pqf-large", "bits:8", "bits:4", "pqf-small+keep:0.5", "bits:8+keep:0.65")
ROOT = Path(__file__).resolve().parents[1]


def _name(model: str) -> str:
    return model.split(":", 1)[1]


def _scores(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    error = np.abs(np.asarray(predicted) / np.asarray(measured) - 1)
    return {
        "within_10pct": float(np.mean(error <= 0.10)),
        "mape": float(np.mean(error)),
        "spearman": float(spearmanr(predicted, measured).statistic) if len(error) > 2 else None,
        "n": len(error),
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _plans(rows: pd.DataFrame) -> list[Plan]:
    return [Plan.from_json(p) for p in rows["plan"]]


def _source(rows: pd.DataFrame) -> pd.Series:
    return rows["plan"].map(lambda p: Plan.from_json(p).provenance.get("source", ""))


def _held_out(n: int, seed: int = 0) -> np.ndarray:
    """A seeded 20% of `n` random plans."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: round(0.2 * n)])


def _collect(args, records_dir: Path) -> dict[str, float]:
    """Measure what is missing (or everything); returns the build seconds per records file."""
    records_dir.mkdir(parents=True, exist_ok=True)
    seconds_file = records_dir / "seconds.json"
    seconds = json.loads(seconds_file.read_text()) if seconds_file.exists() else {}
    common = {"device": args.device, "threads": args.threads, "progress": True}
    for model, shape in MODELS.items():
        path = records_dir / f"{_name(model)}.parquet"
        if not (args.reuse and path.exists()):
            print(
                f"profiling {model}: {args.samples} random plans, the structured ones and their "
                "layers …",
                flush=True,
            )
            start = time.perf_counter()
            records = profile(model, input_shape=shape, samples=args.samples, seed=0, **common)
            seconds[path.stem] = time.perf_counter() - start
            records.attrs = {}
            save_records(records, path)
            seconds_file.write_text(json.dumps(seconds, indent=2))
        again = records_dir / f"{_name(model)}_again.parquet"
        if not (args.reuse and again.exists()):
            first = load_records(path)
            rows = first[first["record"] == "model"].reset_index(drop=True)
            random_rows = rows[~_source(rows).str.startswith("structured")]
            plans = _plans(random_rows.iloc[_held_out(len(random_rows))])
            plans += _plans(rows[_source(rows).str.startswith("structured")])
            graph = record_graphs(first)[(model, shape)]
            plans += [make_preset(graph, name, model=model) for name in PRESETS]
            print(
                f"measuring {model}'s {len(plans)} held-out, structured and preset plans again, "
                "in another process …",
                flush=True,
            )
            measured = profile(
                model, input_shape=shape, plans=plans, structured=False, layers=False, **common
            )
            measured.attrs = {}
            save_records(measured, again)
    synthetic = records_dir / "synthetic_layers.parquet"
    if not (args.reuse and synthetic.exists()):
        print(f"profiling {args.synthetic} synthetic layers …", flush=True)
        start = time.perf_counter()
        layers = profile_layers(synthetic_layer_configs(args.synthetic, seed=0), **common)
        seconds["synthetic_layers"] = time.perf_counter() - start
        save_records(layers, synthetic)
        seconds_file.write_text(json.dumps(seconds, indent=2))
    return seconds


def _models(records: pd.DataFrame) -> pd.DataFrame:
    return records[records["record"] == "model"].reset_index(drop=True)


def _layers(records: pd.DataFrame) -> pd.DataFrame:
    return records[records["record"] == "layer"]


def _fit_all(train: pd.DataFrame, graphs) -> tuple[dict, dict[str, float]]:
    fitted, seconds = {}, {}
    for kind in KINDS:
        start = time.perf_counter()
        fitted[kind] = make_predictor(kind).fit(train, graphs=graphs)
        seconds[kind] = time.perf_counter() - start
    return fitted, seconds


def _noise_floor(first: pd.DataFrame, again: pd.DataFrame) -> dict:
    """The plans measured in both runs, by plan: the ratio's agreement and the absolute
    median's (the old figure), on the same calls."""
    both = first.merge(again, on="plan", suffixes=("", "_again"))
    return {
        "plans": len(both),
        "ratio": _scores(both["ratio_again"], both["ratio"]),
        "absolute_median": _scores(both["median_ms_again"], both["median_ms"]),
        "ms_through_the_run_reference": _scores(both["latency_ms_again"], both["latency_ms"]),
    }


def _seen(name, model, shape, records, again, synthetic, graphs, seconds) -> dict:
    rows = _models(records)
    sources = _source(rows)
    structured = rows[sources.str.startswith("structured")]
    random_rows = rows[~sources.str.startswith("structured")].reset_index(drop=True)
    test_idx = _held_out(len(random_rows))
    train_random = random_rows.drop(index=test_idx)
    test = random_rows.iloc[test_idx]
    layers = _layers(records)
    graph = graphs[(model, shape)]
    train = pd.concat([train_random, structured, layers, synthetic])
    fitted, fit_seconds = _fit_all(train, graphs)
    entry: dict = {
        "plans": {"random": len(random_rows), "structured": len(structured)},
        "layer_configs": len(layers),
        "ratio": _spread(rows["ratio"].tolist()),
        "reference_ms": float(rows["reference_ms"].iloc[0]),
        "within_measurement_spread_median": float(rows["spread"].median()),
        "fit_seconds": fit_seconds,
        "noise_floor": _noise_floor(rows, _models(again)),
        "held_out": {
            kind: _scores(p.predict_ratio(graph, _plans(test)), test["ratio"].to_numpy())
            for kind, p in fitted.items()
        },
    }
    # The plans users ask for, against their second measurement (as measure-latency gives it).
    asked = _models(again)
    asked = asked[~asked["plan"].isin(test["plan"])]
    labels = _source(asked).tolist()
    without = pd.concat([train_random, layers, synthetic])
    plain = make_predictor("network").fit(without, graphs=graphs)
    entry["asked_plans"] = {
        "network": _per_plan(fitted["network"], graph, asked, labels),
        "network_without_structured_records": _per_plan(plain, graph, asked, labels),
        "lookup": _per_plan(fitted["lookup"], graph, asked, labels),
        "flops": _per_plan(fitted["flops"], graph, asked, labels),
    }
    if name in seconds:
        network = fit_seconds["network"]
        entry["build_seconds"] = {
            "profile": seconds[name],
            "fit_network": network,
            "total": seconds[name] + network,
        }
    return entry


def _per_plan(predictor, graph, rows: pd.DataFrame, labels: list[str]) -> dict:
    predicted = predictor.predict_ratio(graph, _plans(rows))
    measured = rows["ratio"].to_numpy()
    return {
        "scores": _scores(predicted, measured),
        "plans": [
            {"plan": label, "predicted": float(p), "measured": float(m), "error": float(p / m - 1)}
            for label, p, m in zip(labels, predicted, measured, strict=True)
        ],
    }


def _throughput(predictors: dict, graph, space, repeats: int = 5, n: int = 10_000) -> dict:
    plans = random_plans(space, n, seed=1)
    batch = LatencyBatch.from_plans(graph, plans)
    result = {"plans": n, "layers": len(graph.layers), "repeats": repeats}
    for kind, predictor in predictors.items():
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            predictor.predict_ratio(graph, batch)
            rates.append(n / (time.perf_counter() - start))
        result[kind] = {"plans_per_s_from_batch": _spread(rates)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--synthetic", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reuse", action="store_true", help="use records already measured")
    parser.add_argument("--records", type=Path, help="records folder (default benchmarks/records)")
    what = "only these models (a quick check; the transfer needs all three)"
    parser.add_argument("--models", nargs="+", choices=list(MODELS), help=what)
    args = parser.parse_args()
    if args.models:
        for model in set(MODELS) - set(args.models):
            del MODELS[model]
    torch.set_num_threads(args.threads)
    records_dir = (args.records or ROOT / "benchmarks" / "records") / args.device.replace(":", "")
    seconds = _collect(args, records_dir)

    records = {_name(m): load_records(records_dir / f"{_name(m)}.parquet") for m in MODELS}
    again = {_name(m): load_records(records_dir / f"{_name(m)}_again.parquet") for m in MODELS}
    graphs = record_graphs(pd.concat(records.values()))
    synthetic = load_records(records_dir / "synthetic_layers.parquet")
    result: dict = {
        "device": device_fingerprint(args.device, args.threads),
        "protocol": {
            "measurement": "interleaved with the uncompressed deployed model, 10 blocks of 3 "
            "timed calls each after 5 warm-up calls of both (single layers: against a fixed "
            "calibration module)",
            "statistic": RATIO_STATISTIC,
            "random_plans_per_model": args.samples,
            "structured_plans_per_model": len(
                structured_plans(SearchSpace(graphs[next(iter(graphs))]))
            ),
            "synthetic_layers": args.synthetic,
            "held_out": "a seeded 20% of each model's random plans",
        },
        "seen": {},
    }
    for model, shape in MODELS.items():
        name = _name(model)
        result["seen"][name] = _seen(
            name, model, shape, records[name], again[name], synthetic, graphs, seconds
        )

    if len(MODELS) < 3:
        _print(result)
        return
    train = pd.concat([records["resnet18"], records["digits"], synthetic])
    fitted, fit_seconds = _fit_all(train, graphs)
    mobile = _models(records["mobilenet_v2"])
    graph = graphs[("zoo:mobilenet_v2", MODELS["zoo:mobilenet_v2"])]
    transfer: dict = {"train": ["zoo:resnet18", "zoo:digits", "synthetic layers"]}
    for kind, predictor in fitted.items():
        transfer[kind] = _scores(predictor.predict_ratio(graph, _plans(mobile)), mobile["ratio"])
    transfer["fit_seconds"] = fit_seconds
    result["transfer_to_mobilenet_v2"] = transfer
    result["throughput"] = _throughput(fitted, graph, SearchSpace(graph))
    result["profile_seconds"] = seconds

    _print(result)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.device == "cpu" else f"_{args.device.replace(':', '')}"
    path = out / f"latency{suffix}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


def _print(result: dict) -> None:
    def line(label: str, s: dict) -> str:
        rho = "  n/a" if s["spearman"] is None else f"{s['spearman']:.3f}"
        return (
            f"  {label:<40} within ±10%: {s['within_10pct']:6.1%}   MAPE {s['mape']:6.1%}   "
            f"ρ {rho}   (n={s['n']})"
        )

    print(f"device: {result['device']}")
    for name, entry in result["seen"].items():
        r, noise = entry["ratio"], entry["noise_floor"]
        print(
            f"{name}: {entry['plans']['random']} random + {entry['plans']['structured']} "
            f"structured plans, ratio {r['min']:.3f}–{r['max']:.3f} of "
            f"{entry['reference_ms']:.2f} ms; {entry['layer_configs']} layer configurations"
        )
        print(line("noise floor: ratio (relative protocol)", noise["ratio"]))
        print(line("noise floor: absolute median (before)", noise["absolute_median"]))
        for kind in KINDS:
            print(line(f"{kind}, held-out ratios", entry["held_out"][kind]))
        for label, per in entry["asked_plans"].items():
            print(line(f"asked plans, {label}", per["scores"]))
        if "build_seconds" in entry:
            print(f"  build: {entry['build_seconds']['total']:.0f} s (profile and fit)")
    transfer = result.get("transfer_to_mobilenet_v2")
    if transfer is None:
        return
    print("transfer: fit on resnet18 + digits (+ synthetic layers), tested on mobilenet_v2")
    for kind in KINDS:
        print(line(kind, transfer[kind]))
    for kind, t in result["throughput"].items():
        if isinstance(t, dict):
            print(f"throughput {kind}: {t['plans_per_s_from_batch']['median']:,.0f} plans/s")


if __name__ == "__main__":
    main()
