"""The relative measurement's protocol: the current one (at least `BLOCKS` blocks, 2 warm-up
calls) beside the one before it (at least 12 blocks, 3 warm-up calls), both with an untimed call
opening each block, and the current one without that call (as single layers are timed),
measured side by side in one process, on the same plans and layers.

    .venv/bin/python scripts/bench_protocol.py [--repeats 6] [--models zoo:resnet18 ...]

For zoo:resnet18 and zoo:mobilenet_v2 (1×3×224×224) and zoo:digits (1×1×8×8): four plans each
(two random, keep 0.35 with 32-bit activations, keep 0.5 with 8-bit ones), their deployed forms
built once, each timed against the uncompressed deployed model `--repeats` times by every
protocol in turn (their order rotating: the machine's phases touch all alike), with
`MIN_TIME_MS` as `profile` uses it. Then 16 single layers of ResNet-18 and MobileNetV2 against
the calibration module, the same way (no least time, as `profile` times layers). Reported per
model and protocol:
- the seconds a measurement takes, over the protocol before's (median and range over repeats);
- the spread of a plan's ratio over the repeats (standard deviation of its log): the noise a
  figure carries, which a cheaper protocol must not raise;
- the shift (each plan's median ratio over its median ratio before, minus 1);
- the same spread by each of `RATIO_STATISTICS`, taken from the very same measurements (the
  figure `RATIO_STATISTIC` picks, against the others), and of the plan's own absolute time
  (its blocks' median fastest call) for comparison.
Prints the figures and writes benchmarks/results/protocol.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from engine.deploy import deployed_structure
from predictors.latency import random_plans, structured_plans
from predictors.latency.features import plan_layer_configs
from predictors.latency.profiling import _calibration_module, _layer_module
from predictors.profile import (
    BLOCKS,
    MIN_TIME_MS,
    RATIO_STATISTIC,
    RATIO_STATISTICS,
    device_fingerprint,
    measure_relative,
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
LAYER_MODELS = ("zoo:resnet18", "zoo:mobilenet_v2")
PROTOCOLS = {
    "before": {"blocks": 12, "warmup": 3, "block_warmup": 1},
    "current": {"blocks": BLOCKS, "warmup": 2, "block_warmup": 1},
    # How `profile` times single layers; for plans, what the untimed call at a block's start
    # is worth.
    "current_without_block_warmup": {"blocks": BLOCKS, "warmup": 2, "block_warmup": 0},
}
STRUCTURED = ("structured:keep=0.35,act_bits=32", "structured:keep=0.5,act_bits=8")
ROOT = Path(__file__).resolve().parents[1]


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _sd_log(per_pair: list[list[float]]) -> dict:
    """Each pair's standard deviation of the log of its figures over the repeats, and their
    median and mean."""
    each = [float(np.std(np.log(r), ddof=1)) for r in per_pair]
    return {"median": statistics.median(each), "mean": float(np.mean(each)), "each": each}


def _side_by_side(pairs, repeats: int, **common) -> dict:
    """Time each (module, reference, inputs, reference inputs) by every protocol, `repeats`
    times, the protocols' order rotating each repeat; the seconds, spreads and shifts, each
    protocol's against "before"."""
    names = list(PROTOCOLS)
    ratios = {name: [[] for _ in pairs] for name in names}
    seconds = {name: [] for name in names}
    # Every statistic (and the absolute time) of the same measurements: what the chosen one
    # is worth against the others, with nothing else different.
    figures = {
        name: {kind: [[] for _ in pairs] for kind in (*RATIO_STATISTICS, "absolute")}
        for name in names
    }
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            for i, (module, reference, inputs, reference_inputs) in enumerate(pairs):
                timing = measure_relative(
                    module,
                    reference,
                    inputs,
                    reference_inputs=reference_inputs,
                    **PROTOCOLS[name],
                    **common,
                )
                ratios[name][i].append(timing.ratio)
                for kind, ratio in timing.ratios.items():
                    figures[name][kind][i].append(ratio)
                fastest = [min(block) for block in timing.module_blocks]
                figures[name]["absolute"][i].append(statistics.median(fastest))
            seconds[name].append(time.perf_counter() - started)
    entry: dict = {
        "pairs": len(pairs),
        "repeats": repeats,
        "seconds_per_measurement": {
            name: statistics.median(s) / len(pairs) for name, s in seconds.items()
        },
        "ratio_spread_sd_log": {name: _sd_log(per_pair) for name, per_pair in ratios.items()},
        "spread_sd_log_by_statistic": {
            name: {kind: _sd_log(per_pair) for kind, per_pair in by_kind.items()}
            for name, by_kind in figures.items()
        },
        "seconds_over_before": {},
        "shift_over_before": {},
    }
    for name in names[1:]:
        entry["seconds_over_before"][name] = _spread(
            [a / b for a, b in zip(seconds[name], seconds["before"], strict=True)]
        )
        shifts = [
            float(np.median(a) / np.median(b) - 1)
            for a, b in zip(ratios[name], ratios["before"], strict=True)
        ]
        entry["shift_over_before"][name] = {"each": shifts, "median": statistics.median(shifts)}
    return entry


def _plans(model: str, shape: str, repeats: int) -> dict:
    loaded = load_model(model, input_shape=shape, pretrained=False)
    graph = discover(loaded.module, loaded.example_inputs, model_name=model)
    space = SearchSpace(graph)
    plans = random_plans(space, 2, seed=5)
    plans += [p for p in structured_plans(space) if p.provenance["source"] in STRUCTURED]
    inputs = loaded.example_inputs
    reference = deployed_structure(loaded.module, Plan(layers={}), inputs, graph=graph)
    pairs = [
        (deployed_structure(loaded.module, p, inputs, graph=graph), reference, inputs, None)
        for p in plans
    ]
    return _side_by_side(pairs, repeats, min_time_ms=MIN_TIME_MS)


def _layers(model: str, shape: str, repeats: int, count: int = 16) -> dict:
    loaded = load_model(model, input_shape=shape, pretrained=False)
    graph = discover(loaded.module, loaded.example_inputs, model_name=model)
    configs, _ = plan_layer_configs(graph, random_plans(SearchSpace(graph), 3, seed=2)).unique()
    flat = configs.reshape(-1)
    columns = flat.columns()
    chosen = np.random.default_rng(0).choice(len(flat.kind), count, replace=False)
    calibration, calibration_inputs = _calibration_module("cpu")
    pairs = []
    for i in chosen:
        layer, layer_shape = _layer_module({k: int(v[i]) for k, v in columns.items()}, "cpu")
        pairs.append((layer, calibration, (torch.randn(*layer_shape),), calibration_inputs))
    return _side_by_side(pairs, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    result: dict = {
        "device": device_fingerprint("cpu", 1),
        "protocols": PROTOCOLS,
        "min_time_ms": MIN_TIME_MS,
        "plans": {},
        "layers": {},
    }
    for model in args.models:
        print(f"{model}: plans, both protocols, {args.repeats} repeats …", flush=True)
        result["plans"][model] = _plans(model, MODELS[model], args.repeats)
        _print(model, "plans", result["plans"][model])
    for model in (m for m in LAYER_MODELS if m in args.models):
        print(f"{model}: single layers, both protocols …", flush=True)
        result["layers"][model] = _layers(model, MODELS[model], args.repeats)
        _print(model, "layers", result["layers"][model])
    out = ROOT / "benchmarks" / "results" / "protocol.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


def _print(model: str, what: str, entry: dict) -> None:
    sd = entry["ratio_spread_sd_log"]
    print(
        f"  {model} {what}: ratio spread (sd of log over {entry['repeats']} repeats, median "
        f"over {entry['pairs']}) before {sd['before']['median']:.2%}"
    )
    for name, time_ratio in entry["seconds_over_before"].items():
        print(
            f"    {name}: time over before {time_ratio['median']:.2f} "
            f"({time_ratio['min']:.2f}–{time_ratio['max']:.2f}); spread "
            f"{sd[name]['median']:.2%}; shift {entry['shift_over_before'][name]['median']:+.2%}"
        )
    by_statistic = entry["spread_sd_log_by_statistic"]["current"]
    chosen = f"{RATIO_STATISTIC}, the one taken"
    print(
        "    current, spread by statistic: "
        + ", ".join(
            f"{chosen if kind == RATIO_STATISTIC else kind} {s['median']:.2%}"
            for kind, s in by_statistic.items()
        )
    )


if __name__ == "__main__":
    main()
