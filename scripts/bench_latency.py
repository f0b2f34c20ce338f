"""Latency on a noisy machine: the relative protocol's noise floor beside the absolute one, and the
predictors (FLOPs, lookup table, network) scored on the ratio, side by side.

    .venv/bin/python scripts/bench_latency.py [--samples 60] [--test 40] [--synthetic 300]
                                              [--device cpu] [--threads 1] [--reuse]
                                              [--records DIR] [--models M ...]

For zoo:resnet18 (1×3×224×224), zoo:mobilenet_v2 (1×3×224×224) and zoo:digits (1×1×8×8):
1. Build a predictor as a user does: `profile` `--samples` random plans, the structured ones
   (uniform keeps 0.35–1 with 32- and 8-bit activations) and their single layers, each plan timed
   interleaved with the uncompressed model (`measure_relative`, `profile`'s defaults), in a fresh
   process; then fit. Its seconds are the build time.
2. Test plans: `--test` random plans of another seed, the structured plans and the presets (PQF
   small and large, 8- and 4-bit weights, with keeps), each measured twice, in fresh processes
   minutes apart. Noise floor: the share of plans whose second figure is within ±10% of the
   first, for the ratio (the relative protocol), for the absolute median of the same calls
   (what a figure was before) and for the calibration units.
3. Predictors fit on the build records (plus the synthetic layers), scored on the held-out
   random test plans' ratios (the geometric mean of their two measurements; against one
   measurement too): share within ±10%, MAPE and Spearman's ρ. Structured plans and presets:
   each predicted against its test measurements, by predictors fit with and without the
   structured records; and the structured plans' build measurements against their test ones,
   what a predictor that repeats its records reaches at best.
4. Transfer: fit on resnet18 and digits (and the synthetic layers), scored on mobilenet_v2's test
   plans (and its build plans, measured once); then the network again with the build records of
   three zoo families added (`FAMILIES`: efficientnet_tiny's MBConv blocks, regnet_tiny's grouped
   convolutions, convnext_tiny's depthwise 7x7 at 224x224, `--samples` random plans and the
   structured ones each), as a user who profiles them on their device would fit it; and with
   one record of mobilenet_v2 (its uncompressed plan, seconds to measure) beside them or alone.
5. Throughput: 10,000 plans of mobilenet_v2 (53 layers) from arrays, 5 repeats.
Records go to benchmarks/records/<device>/ (`--reuse` takes them from there). Prints everything
and writes benchmarks/results/latency.json (latency_<device>.json for a device other than cpu).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
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
from predictors.profile import (
    BLOCK_MS,
    BLOCKS,
    MIN_TIME_MS,
    RATIO_STATISTIC,
    device_fingerprint,
)
from search_spaces import SearchSpace
from search_spaces.discover import discover
from search_spaces.model_spec import load_model
from search_spaces.plan import Plan

MODELS = {
    "zoo:resnet18": "1x3x224x224",
    "zoo:mobilenet_v2": "1x3x224x224",
    "zoo:digits": "1x1x8x8",
}
# Build records only, for the transfer: architectures with the block kinds a new model may share.
FAMILIES = {
    "zoo:efficientnet_tiny": "1x3x224x224",
    "zoo:regnet_tiny": "1x3x224x224",
    "zoo:convnext_tiny": "1x3x224x224",
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


def _test_plans(model: str, shape: str, samples: int) -> list[Plan]:
    """The plans every predictor is scored on: `samples` random plans of another seed than the
    build's, the structured ones and the presets."""
    loaded = load_model(model, input_shape=shape, pretrained=False)
    graph = discover(loaded.module, loaded.example_inputs, model_name=model)
    space = SearchSpace(graph)
    plans = random_plans(space, samples, seed=1)
    plans += structured_plans(space)
    presets = [make_preset(graph, name, model=model) for name in PRESETS]
    # Without the creation time, so that both measurements of a preset name one plan.
    return plans + [replace(p, provenance={"source": p.provenance["source"]}) for p in presets]


def _collect(args, records_dir: Path) -> dict[str, float]:
    """Measure what is missing (or everything); returns the build seconds per records file.

    Order: every model's build, every model's first test measurement, the synthetic layers, the
    families' builds, every model's second test measurement, so that the two measurements of a
    plan lie minutes apart, in other phases of the machine."""
    records_dir.mkdir(parents=True, exist_ok=True)
    seconds_file = records_dir / "seconds.json"
    seconds = json.loads(seconds_file.read_text()) if seconds_file.exists() else {}
    common = {"device": args.device, "threads": args.threads, "progress": True}

    def missing(path: Path) -> bool:
        return not (args.reuse and path.exists())

    def build(model: str, shape: str, purpose: str) -> None:
        path = records_dir / f"{_name(model)}.parquet"
        if missing(path):
            print(
                f"building {model}'s {purpose}: {args.samples} random plans, the structured "
                "ones and their layers …",
                flush=True,
            )
            start = time.perf_counter()
            records = profile(model, input_shape=shape, samples=args.samples, seed=0, **common)
            seconds[path.stem] = time.perf_counter() - start
            records.attrs = {}
            save_records(records, path)
            seconds_file.write_text(json.dumps(seconds, indent=2))

    for model, shape in MODELS.items():
        build(model, shape, "predictor records")

    test_plans: dict[str, list[Plan]] = {}  # drawn once, measured twice

    def measure_tests(run: str) -> None:
        for model, shape in MODELS.items():
            path = records_dir / f"{_name(model)}_test_{run}.parquet"
            if missing(path):
                if model not in test_plans:
                    test_plans[model] = _test_plans(model, shape, args.test)
                plans = test_plans[model]
                print(
                    f"measuring {model}'s {len(plans)} test plans (held-out random, structured, "
                    f"presets), measurement {run}, in a fresh process …",
                    flush=True,
                )
                measured = profile(
                    model, input_shape=shape, plans=plans, structured=False, layers=False, **common
                )
                measured.attrs = {}
                save_records(measured, path)

    measure_tests("a")
    synthetic = records_dir / "synthetic_layers.parquet"
    if missing(synthetic):
        print(f"profiling {args.synthetic} synthetic layers …", flush=True)
        start = time.perf_counter()
        layers = profile_layers(synthetic_layer_configs(args.synthetic, seed=0), **common)
        seconds["synthetic_layers"] = time.perf_counter() - start
        save_records(layers, synthetic)
        seconds_file.write_text(json.dumps(seconds, indent=2))
    for model, shape in FAMILIES.items():
        build(model, shape, "records for the transfer")
    measure_tests("b")
    return seconds


def _models(records: pd.DataFrame) -> pd.DataFrame:
    return records[records["record"] == "model"].reset_index(drop=True)


def _layers(records: pd.DataFrame) -> pd.DataFrame:
    return records[records["record"] == "layer"]


def _fit_all(train: pd.DataFrame, graphs, **network) -> tuple[dict, dict[str, float]]:
    """Every kind fit on `train`; `network`: the network's options."""
    fitted, seconds = {}, {}
    for kind in KINDS:
        start = time.perf_counter()
        fitted[kind] = make_predictor(kind, **(network if kind == "network" else {})).fit(
            train, graphs=graphs
        )
        seconds[kind] = time.perf_counter() - start
    return fitted, seconds


def _noise_floor(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    """The test plans' two measurements, by plan: the ratio's agreement and the absolute
    median's (the figure before the relative protocol), on the same calls."""
    both = a.merge(b, on="plan", suffixes=("", "_b"))
    return {
        "plans": len(both),
        "ratio": _scores(both["ratio_b"], both["ratio"]),
        "absolute_median": _scores(both["median_ms_b"], both["median_ms"]),
        "ms_through_the_run_reference": _scores(both["latency_ms_b"], both["latency_ms"]),
        "units": _scores(both["units_b"], both["units"]),
    }


def _measured_twice(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """The test plans with `ratio` the geometric mean of their two measurements (the truth a
    predictor is scored on), `ratio_a` and `ratio_b` beside it."""
    both = a.merge(b[["plan", "ratio"]], on="plan", suffixes=("_a", "_b"))
    both["ratio"] = np.sqrt(both["ratio_a"] * both["ratio_b"])
    return both


def _link(*runs: pd.DataFrame) -> list[float]:
    """The uncompressed model's ratio to the calibration module, in each run."""
    return [float(_models(r)["reference_units"].iloc[0]) for r in runs]


def _seen(name, model, shape, records, test_a, test_b, synthetic, graphs, seconds) -> dict:
    rows = _models(records)
    structured = rows[_source(rows).str.startswith("structured")]
    random_rows = rows[_source(rows) == "search_space"]
    layers = _layers(records)
    graph = graphs[(model, shape)]
    train = pd.concat([records, synthetic])
    fitted, fit_seconds = _fit_all(train, graphs)
    tests = _measured_twice(_models(test_a), _models(test_b))
    sources = _source(tests)
    held = tests[sources == "search_space"]  # the random plans
    entry: dict = {
        "plans": {"random": len(random_rows), "structured": len(structured)},
        "layer_configs": len(layers),
        "test_plans": {"random": len(held), "asked": len(tests) - len(held)},
        "ratio": _spread(rows["ratio"].tolist()),
        "reference_ms": float(rows["reference_ms"].iloc[0]),
        "link_to_calibration": _link(records, test_a, test_b),
        "within_measurement_spread_median": float(rows["spread"].median()),
        "fit_seconds": fit_seconds,
        "noise_floor": _noise_floor(_models(test_a), _models(test_b)),
        "held_out": {
            kind: _scores(p.predict_ratio(graph, _plans(held)), held["ratio"].to_numpy())
            for kind, p in fitted.items()
        },
        "held_out_against_one_measurement": {
            kind: _scores(p.predict_ratio(graph, _plans(held)), held["ratio_a"].to_numpy())
            for kind, p in fitted.items()
        },
    }
    # The plans users ask for (uniform keeps, presets), against their test measurements.
    asked = tests[sources != "search_space"]
    labels = _source(asked).tolist()
    plain = make_predictor("network").fit(
        pd.concat([random_rows, layers, synthetic]), graphs=graphs
    )
    entry["asked_plans"] = {
        "network": _per_plan(fitted["network"], graph, asked, labels),
        "network_without_structured_records": _per_plan(plain, graph, asked, labels),
        "lookup": _per_plan(fitted["lookup"], graph, asked, labels),
        "flops": _per_plan(fitted["flops"], graph, asked, labels),
    }
    # What a predictor that repeats its build records at best reaches on the structured plans:
    # their build measurement against the test measurements, made later in the run.
    built = structured.merge(tests[["plan", "ratio"]], on="plan", suffixes=("_build", ""))
    entry["structured_build_against_test"] = _scores(built["ratio_build"], built["ratio"])
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


def _network_transfer(train, graphs, graph, tests, seeds=(0, 1, 2), **options) -> dict:
    """The network's transfer scores for several seeds of its initial weights (the transfer
    moves with them), and their median share within ±10%."""
    by_seed = {
        seed: _scores(
            make_predictor("network", seed=seed, **options)
            .fit(train, graphs=graphs)
            .predict_ratio(graph, _plans(tests)),
            tests["ratio"],
        )
        for seed in seeds
    }
    shares = [s["within_10pct"] for s in by_seed.values()]
    return {"seeds": by_seed, "within_10pct": _spread(shares)}


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
    parser.add_argument("--test", type=int, default=40, help="held-out random plans per model")
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
    tests = {
        _name(m): [load_records(records_dir / f"{_name(m)}_test_{r}.parquet") for r in "ab"]
        for m in MODELS
    }
    families = [load_records(records_dir / f"{_name(m)}.parquet") for m in FAMILIES]
    graphs = record_graphs(pd.concat([*records.values(), *families]))
    synthetic = load_records(records_dir / "synthetic_layers.parquet")
    result: dict = {
        "device": device_fingerprint(args.device, args.threads),
        "protocol": {
            "measurement": f"interleaved with the uncompressed deployed model: {BLOCKS} "
            "blocks of each side, each an untimed call and at least 3 timed calls and "
            f"{BLOCK_MS:g} ms (a faster side takes more calls, up to 64), and more blocks where "
            f"{BLOCKS} time the uncompressed model for under {MIN_TIME_MS:g} ms, in 3 rounds "
            "with both built afresh, 2 warm-up calls of each per round (single layers: "
            f"{BLOCKS} blocks without the untimed call against a fixed calibration module; the "
            "link: the uncompressed model likewise, with it)",
            "min_time_ms": MIN_TIME_MS,
            "statistic": RATIO_STATISTIC,
            "build_plans_per_model": f"{args.samples} random (seed 0) and the structured ones",
            "structured_plans_per_model": len(
                structured_plans(SearchSpace(graphs[next(iter(graphs))]))
            ),
            "synthetic_layers": args.synthetic,
            "test_plans": f"{args.test} random (seed 1), the structured ones and the presets "
            f"({', '.join(PRESETS)}), each measured twice in fresh processes minutes apart; a "
            "predictor is scored against the geometric mean of the two measurements",
        },
        "seen": {},
    }
    for model, shape in MODELS.items():
        name = _name(model)
        result["seen"][name] = _seen(
            name, model, shape, records[name], *tests[name], synthetic, graphs, seconds
        )

    if len(MODELS) < 3:
        _print(result)
        return
    train = pd.concat([records["resnet18"], records["digits"], synthetic])
    # As `compplan fit-latency --for-other-models` fits it: the quantizer priced by its input's
    # size and bits alone.
    for_others = {"quantizer_by_elements": True}
    fitted, fit_seconds = _fit_all(train, graphs, **for_others)
    mobile = _models(records["mobilenet_v2"])
    mobile_tests = _measured_twice(*map(_models, tests["mobilenet_v2"]))
    graph = graphs[("zoo:mobilenet_v2", MODELS["zoo:mobilenet_v2"])]
    transfer: dict = {"train": ["zoo:resnet18", "zoo:digits", "synthetic layers"]}
    for kind, predictor in fitted.items():
        transfer[kind] = _scores(
            predictor.predict_ratio(graph, _plans(mobile_tests)), mobile_tests["ratio"]
        )
        transfer[f"{kind}_on_build_plans"] = _scores(
            predictor.predict_ratio(graph, _plans(mobile)), mobile["ratio"]
        )
    transfer["fit_seconds"] = fit_seconds
    transfer["network_by_seed"] = _network_transfer(
        train, graphs, graph, mobile_tests, **for_others
    )
    transfer["network_by_seed_as_for_its_own_models"] = _network_transfer(
        train, graphs, graph, mobile_tests
    )
    # With one measurement of the new model: its uncompressed plan, as `compplan profile
    # --plan` of an empty plan gives it in seconds (the build's keep-1, 32-bit record).
    uncompressed = mobile[_source(mobile) == "structured:keep=1,act_bits=32"]
    transfer["network_by_seed_with_one_uncompressed_record"] = _network_transfer(
        pd.concat([train, uncompressed]), graphs, graph, mobile_tests, **for_others
    )
    transfer["network_by_seed_as_for_its_own_models_with_one_uncompressed_record"] = (
        _network_transfer(pd.concat([train, uncompressed]), graphs, graph, mobile_tests)
    )
    # The same with the zoo families' records: the block kinds MobileNetV2 shares with them.
    with_families = pd.concat([train, *families])
    transfer["train_with_families"] = [*transfer["train"], *FAMILIES]
    transfer["network_by_seed_with_families_as_for_its_own_models"] = _network_transfer(
        with_families, graphs, graph, mobile_tests
    )
    transfer["network_by_seed_with_families"] = _network_transfer(
        with_families, graphs, graph, mobile_tests, **for_others
    )
    # Both: the families' block kinds, and the scale of the new model in this phase.
    with_both = pd.concat([with_families, uncompressed])
    transfer["network_by_seed_with_families_and_one_uncompressed_record_as_for_its_own_models"] = (
        _network_transfer(with_both, graphs, graph, mobile_tests)
    )
    transfer["network_by_seed_with_families_and_one_uncompressed_record"] = _network_transfer(
        with_both, graphs, graph, mobile_tests, **for_others
    )
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
        print(line("noise floor: calibration units", noise["units"]))
        link = ", ".join(f"{v:.3f}" for v in entry["link_to_calibration"])
        print(f"  link to the calibration module (build, test a, test b): {link}")
        for kind in KINDS:
            print(line(f"{kind}, held-out ratios", entry["held_out"][kind]))
        for label, per in entry["asked_plans"].items():
            print(line(f"asked plans, {label}", per["scores"]))
        print(line("structured, build measurement vs test", entry["structured_build_against_test"]))
        if "build_seconds" in entry:
            print(f"  build: {entry['build_seconds']['total']:.0f} s (profile and fit)")
    transfer = result.get("transfer_to_mobilenet_v2")
    if transfer is None:
        return
    print(
        "transfer: fit on resnet18 + digits (+ synthetic layers), tested on mobilenet_v2; "
        "the network as --for-other-models fits it"
    )
    for kind in KINDS:
        print(line(kind, transfer[kind]))
    labels = (
        "by_seed",
        "by_seed_as_for_its_own_models",
        "by_seed_with_one_uncompressed_record",
        "by_seed_as_for_its_own_models_with_one_uncompressed_record",
        "by_seed_with_families_as_for_its_own_models",
        "by_seed_with_families",
        "by_seed_with_families_and_one_uncompressed_record_as_for_its_own_models",
        "by_seed_with_families_and_one_uncompressed_record",
    )
    for label in (f"network_{label}" for label in labels):
        share = transfer[label]["within_10pct"]
        print(
            f"  {label}: within ±10% median {share['median']:.1%} "
            f"({share['min']:.1%}–{share['max']:.1%}) over seeds 0, 1, 2"
        )
    for kind, t in result["throughput"].items():
        if isinstance(t, dict):
            print(f"throughput {kind}: {t['plans_per_s_from_batch']['median']:,.0f} plans/s")


if __name__ == "__main__":
    main()
