"""Profiling: measured latencies of deployed plans and of single layers, as records.

`profile` draws random plans of a model (or takes the user's), builds each plan's deployed form
(`engine.deploy.deployed_structure`: channels pruned, activation quantizers in place, BatchNorm
folded, weights dense) and times it with `predictors.profile.measure`. It also times, alone, every
distinct layer configuration those plans contain: the lookup table's entries and the network's
per-layer supervision. `profile_layers` times any list of layer configurations, for example the
random ones of `synthetic_layer_configs`, which teach the network layer kinds no profiled model has.

Measurements run in fresh processes, one at a time (`processes`), because a median moves between
processes on a shared machine; `repeats` > 1 measures every plan in that many different processes
and keeps the median. With `processes=0` all runs in this process (tests, quick looks).

This is the one place where `predictors` reaches into `engine`: the deployed form is the engine's
to build, and a latency is only true of what really runs. The import is local to the functions
that measure, so predicting never loads the engine.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from predictors.latency.features import KINDS, LayerConfigs, plan_layer_configs
from predictors.profile import MIN_RUNS, MeasurementError, device_fingerprint
from search_spaces.macs import layer_macs
from search_spaces.plan import Plan

__all__ = [
    "ProfileError",
    "profile",
    "profile_layers",
    "random_plans",
    "synthetic_layer_configs",
]

_CONFIG_COLUMNS = tuple(LayerConfigs.__dataclass_fields__)
_BLOCK = 256  # jobs built and measured together in rounds


class ProfileError(RuntimeError):
    """Profiling could not run or a measuring process failed; the message says why."""


def random_plans(space, n: int, *, seed: int = 0) -> list[Plan]:
    """`n` random plans of a `SearchSpace`, spread from barely to heavily compressed.

    Drawing every knob uniformly makes every plan prune about half its groups, so the latencies
    bunch together. Each plan here first draws how often it prunes and quantizes activations
    (uniform in [0, 1]), then draws each group and layer with those odds.
    """
    rng = np.random.default_rng(seed)
    distributions = space.to_optuna()
    plans = []
    for _ in range(n):
        prune_odds, act_odds = rng.random(2)
        params: dict[str, Any] = {}
        for name, dist in distributions.items():
            choices = list(dist.choices)
            if name.endswith("/keep"):
                smaller = [c for c in choices if c < 1.0]
                prune = smaller and rng.random() < prune_odds
                params[name] = smaller[rng.integers(len(smaller))] if prune else max(choices)
            elif name.endswith("/act_bits"):
                lower = [c for c in choices if c < 32]
                quantize = lower and rng.random() < act_odds
                params[name] = lower[rng.integers(len(lower))] if quantize else max(choices)
            else:
                params[name] = choices[rng.integers(len(choices))]
        plans.append(space.decode(params))
    return plans


def synthetic_layer_configs(n: int, *, batch: int = 1, seed: int = 0, max_macs: float = 3e8):
    """`n` random layer configurations spanning what CNNs run: dense, pointwise and depthwise
    convs over 7²…224² inputs, strided or not, and Linear layers; with and without activation
    quantization. MACs (per example) are kept below `max_macs` so that none takes long to time.
    """
    rng = np.random.default_rng(seed)
    rows: list[dict[str, int]] = []
    while len(rows) < n:
        family = rng.choice(["dense", "pointwise", "depthwise", "linear"], p=[0.3, 0.3, 0.25, 0.15])
        act_bits = int(rng.choice([32, 32, 2, 4, 8]))
        channels = lambda: int(8 * round(2 ** rng.uniform(1, 7)))  # noqa: E731 (8..1024)
        if family == "linear":
            c_in, c_out = channels(), channels()
            row = {
                "kind": 2,
                "c_in": c_in,
                "c_out": c_out,
                "groups": 1,
                "kernel": 1,
                "stride": 1,
                "in_spatial": 1,
                "out_spatial": 1,
            }
        else:
            side = int(rng.choice([7, 14, 28, 56, 112, 224]))
            stride = int(rng.choice([1, 1, 2]))
            out_side = (side - 1) // stride + 1
            kernel_side = {"dense": int(rng.choice([3, 3, 5, 7])), "pointwise": 1}.get(
                family, int(rng.choice([3, 5]))
            )
            c_in = channels()
            c_out = c_in if family == "depthwise" else channels()
            row = {
                "kind": 0,
                "c_in": c_in,
                "c_out": c_out,
                "groups": c_in if family == "depthwise" else 1,
                "kernel": kernel_side**2,
                "stride": stride,
                "in_spatial": side * side,
                "out_spatial": out_side * out_side,
            }
        row.update(batch=batch, act_bits=act_bits, weight_bits=32)
        if _macs(row) // batch <= max_macs:  # per example
            rows.append(row)
    return LayerConfigs.from_columns(**{k: [r[k] for r in rows] for k in rows[0]})


# -- building and timing (run inside the measuring process) --------------------------------------


def _side(elements: int) -> int:
    side = math.isqrt(elements)
    return side if side * side == elements else elements


def _layer_module(config: dict[str, int], device: str):
    """A single layer as the deployed form runs it, and the shape of its input."""
    from torch import nn

    from search_spaces.methods import DEFAULT_ACTIVATION_METHOD, activation_method, deployed_layer

    kind = KINDS[config["kind"]]
    c_in, c_out, batch = config["c_in"], config["c_out"], config["batch"]
    if kind == "linear":
        layer: nn.Module = nn.Linear(c_in, c_out)
        tokens = config["in_spatial"]
        shape = (batch, tokens, c_in) if tokens > 1 else (batch, c_in)
    else:
        conv = nn.Conv2d if kind == "conv2d" else nn.Conv1d
        side = _side(config["kernel"]) if kind == "conv2d" else config["kernel"]
        layer = conv(
            c_in, c_out, side, stride=config["stride"], padding=side // 2, groups=config["groups"]
        )
        spatial = config["in_spatial"]
        shape = (
            (batch, c_in, _side(spatial), _side(spatial))
            if kind == "conv2d"
            else (batch, c_in, spatial)
        )
    activations = activation_method(DEFAULT_ACTIVATION_METHOD).config(config["act_bits"])
    return deployed_layer(layer.to(device), activations).eval(), tuple(shape)


def _measure_jobs(
    jobs: list[dict],
    settings: dict,
    report: Callable[[int, dict], None],
    progress: Callable[[], None] = lambda: None,
) -> None:
    """Time each job ({"plan": json} or {"layer": config}); report(index, timing dict).

    The timed calls are split into `settings["rounds"]` rounds that go over every job in turn,
    so that each job's calls are spread over the whole run: on a shared machine the load changes
    over seconds, and a median of calls taken at one moment inherits that moment's load.
    `progress()` is called after each job's round.
    """
    import torch

    from engine.deploy import deployed_structure
    from predictors.profile import Timing, time_calls
    from search_spaces.discover import discover
    from search_spaces.model_spec import load_model

    torch.manual_seed(0)
    device, threads = settings["device"], settings["threads"]
    rounds = max(1, settings.get("rounds", 1))
    torch.set_num_threads(threads)
    model: list = []  # [loaded model, graph], built on the first plan job
    inputs_by_shape: dict[tuple, Any] = {}

    def build(job: dict):
        if "layer" in job:
            module, shape = _layer_module(job["layer"], device)
            if shape not in inputs_by_shape:
                inputs_by_shape[shape] = torch.randn(*shape, device=device)
            return module, (inputs_by_shape[shape],)
        if not model:
            loaded = load_model(
                settings["model"],
                input_shape=settings["input_shape"],
                pretrained=False,
                inputs=settings.get("inputs"),
            )
            model.extend(
                [
                    loaded,
                    discover(loaded.module, loaded.example_inputs, model_name=settings["model"]),
                ]
            )
        loaded, graph = model
        plan = Plan.from_json(job["plan"])
        module = deployed_structure(loaded.module, plan, loaded.example_inputs, graph=graph)
        return module.to(device), tuple(t.to(device) for t in loaded.example_inputs)

    runs = settings["runs"]
    # Blocks bound the memory held by built modules; rounds go over one block.
    for start in range(0, len(jobs), _BLOCK):
        block = [build(job) for job in jobs[start : start + _BLOCK]]
        times: list[list[float]] = [[] for _ in block]
        for round_ in range(rounds):
            # Later rounds warm up less: the code paths are warm, only the caches are not.
            warmup = settings["warmup"] if round_ == 0 else min(3, settings["warmup"])
            calls = runs // rounds + (1 if round_ < runs % rounds else 0)
            for index, (module, inputs) in enumerate(block):
                with torch.no_grad():
                    times[index] += time_calls(
                        module, inputs, runs=calls, warmup=warmup, threads=threads
                    )
                progress()
        for index, durations in enumerate(times):
            report(start + index, Timing.of(durations).to_dict())


def _run_jobs(jobs: list[dict], settings: dict, processes: int, on_progress: Callable[[], None]):
    """Timings of `jobs`, in order: in this process (processes=0) or split across that many
    fresh processes (`python -m predictors.latency.worker`), run one after another so that no
    two measurements overlap. A fresh interpreter, not multiprocessing's spawn, so that a
    caller's script needs no `if __name__ == "__main__"` guard."""
    timings: list[dict | None] = [None] * len(jobs)

    def record(index: int, timing: dict) -> None:
        timings[index] = timing

    if processes == 0:
        _measure_jobs(jobs, settings, record, on_progress)
        return timings
    size = max(math.ceil(len(jobs) / processes), 1)
    for offset in range(0, len(jobs), size):
        chunk = jobs[offset : offset + size]
        for index, timing in _worker_timings(chunk, settings):
            if index is None:
                on_progress()
            else:
                record(offset + index, timing)
    return timings


def _worker_timings(jobs: list[dict], settings: dict):
    """Run one measuring process over `jobs`; yield (index, timing) as each finishes and
    (None, None) for each round of a job."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    with tempfile.TemporaryFile("w+") as errors:
        worker = subprocess.Popen(
            [sys.executable, "-m", "predictors.latency.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=env,
        )
        try:
            worker.stdin.write(json.dumps({"jobs": jobs, "settings": settings}))
            worker.stdin.close()
            for line in worker.stdout:
                message = json.loads(line)
                yield message.get("index"), message.get("timing")
            code = worker.wait()
        finally:
            if worker.poll() is None:  # interrupted: stop our own child
                worker.kill()
                worker.wait()
        if code != 0:
            errors.seek(0)
            lines = [line for line in errors.read().splitlines() if line.strip()]
            last = lines[-1] if lines else f"exit code {code}"
            raise ProfileError(f"a measuring process failed: {last}")


def _settings(model, input_shape, device, threads, runs, warmup, rounds) -> dict:
    if runs < MIN_RUNS:
        raise MeasurementError(f"a latency needs at least {MIN_RUNS} timed runs (got {runs})")
    if threads < 1:
        raise MeasurementError(f"threads must be at least 1 (got {threads})")
    if not 1 <= rounds <= runs // 2:
        raise MeasurementError(f"rounds must be in 1..runs/2 (got {rounds} for {runs} runs)")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ProfileError(f"device '{device}' was asked for, but torch sees no CUDA device")
    elif device != "cpu":
        raise MeasurementError(f"device must be 'cpu' or 'cuda[:N]' (got '{device}')")
    return {
        "model": model,
        "input_shape": input_shape,
        "device": device,
        "threads": threads,
        "runs": runs,
        "warmup": warmup,
        "rounds": rounds,
    }


def _progress(total: int, label: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label, unit="run", disable=not enabled, leave=False)


def _timed_rows(jobs, settings, processes, repeats, label, progress) -> list[dict]:
    """One row of timing columns per job: the median over `repeats` processes."""
    bar = _progress(len(jobs) * repeats * settings["rounds"], label, progress)
    per_repeat = []
    try:
        for _ in range(repeats):
            per_repeat.append(_run_jobs(jobs, settings, processes, lambda: bar.update(1)))
    finally:
        bar.close()
    rows = []
    for j in range(len(jobs)):
        medians = [r[j]["median_ms"] for r in per_repeat]
        middle = per_repeat[int(np.argsort(medians)[len(medians) // 2])][j]
        rows.append(
            {
                "latency_ms": float(np.median(medians)),
                "spread": middle["spread"],
                "min_ms": middle["min_ms"],
                "max_ms": middle["max_ms"],
                "runs": middle["runs"],
                "repeats_ms": json.dumps([round(m, 6) for m in medians]),
            }
        )
    return rows


def _fingerprint_columns(device: str, threads: int) -> dict[str, Any]:
    fingerprint = device_fingerprint(device, threads)
    return {
        "device": fingerprint["device"],
        "cpu": fingerprint["cpu"],
        "threads": fingerprint["threads"],
        "torch": fingerprint["torch"],
        "gpu": fingerprint.get("gpu", ""),
    }


def profile_layers(
    configs: LayerConfigs,
    *,
    device: str = "cpu",
    threads: int = 1,
    runs: int = MIN_RUNS,
    warmup: int = 10,
    rounds: int = 3,
    processes: int = 1,
    repeats: int = 1,
    source: str = "synthetic",
    progress: bool = True,
) -> pd.DataFrame:
    """Time single layers (flat `configs`); one "layer" record per configuration."""
    settings = _settings(None, None, device, threads, runs, warmup, rounds)
    flat = configs.reshape(-1)
    rows_in = [{k: int(v[i]) for k, v in flat.columns().items()} for i in range(len(flat.kind))]
    timed = _timed_rows(
        [{"layer": r} for r in rows_in], settings, processes, repeats, "layers", progress
    )
    fingerprint = _fingerprint_columns(device, threads)
    rows = [
        {
            "record": "layer",
            "model": source,
            "input_shape": "",
            "plan": "",
            **config,
            "macs": _macs(config),
            **timing,
            **fingerprint,
        }
        for config, timing in zip(rows_in, timed, strict=True)
    ]
    return pd.DataFrame(rows)


def _macs(config: dict[str, int]) -> int:
    keys = ("c_out", "c_in", "groups", "kernel", "out_spatial", "batch")
    return layer_macs(**{key: config[key] for key in keys})


def profile(
    model: str,
    *,
    input_shape: str | Sequence[int] | None = None,
    inputs: str | None = None,
    plans: Sequence[Plan] | None = None,
    samples: int = 100,
    seed: int = 0,
    space=None,
    device: str = "cpu",
    threads: int = 1,
    runs: int = MIN_RUNS,
    warmup: int = 10,
    rounds: int = 3,
    processes: int = 1,
    repeats: int = 1,
    layers: bool = True,
    synthetic_layers: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Measure the deployed form of plans of `model`, and (with `layers`) their single layers.

    Args:
        model: a model spec ("zoo:resnet18", "pkg.module:factory", "file.py:factory"); it is
            rebuilt in each measuring process, untrained (latency depends on shapes only).
        input_shape: the input, batch first (the user's batch size); zoo models have a default.
        inputs: a data file whose `x` gives the example input instead, of its dtype (token ids;
            `search_spaces.data_file`), read again in each measuring process.
        plans: the plans to measure; None draws `samples` random plans of `space` (default: the
            full `SearchSpace` of the model) with `random_plans`.
        device: "cpu" or "cuda[:N]".
        threads: torch's intra-op threads while timing.
        runs, warmup: timed calls (at least 30; the median is kept) and untimed calls first.
        rounds: the timed calls are taken in this many rounds over all plans (and layers), so
            that each median spans the whole run rather than one moment's machine load.
        processes: split the work across this many fresh processes, run one at a time (0: here).
        repeats: measure everything this many times, in different processes; keep the median.
        layers: also time each distinct layer configuration of the plans alone.
        synthetic_layers: also time this many random single layers (`synthetic_layer_configs`
            at the input's batch size, seeded by `seed`; their `model` is "synthetic"): they
            teach the network layer kinds this model lacks.
        progress: show a progress bar.

    Returns:
        Records, one row per plan ("model") and per layer configuration ("layer"): the timing
        (`latency_ms` median, `spread`, `min_ms`, `max_ms`, `runs`, `repeats_ms`), the plan as
        JSON or the layer's configuration columns, deployed MACs, and the device fingerprint
        (`device`, `cpu`, `threads`, `torch`, `gpu`). `attrs["profile_seconds"]` is the time
        spent measuring. Save with `save_records`; summarize with `ProfileSummary.of`.

    Raises:
        ModelSpecError: the model spec or shape is unusable.
        PlanError: a plan does not fit the model.
        ProfileError: a measuring process failed, or the device is absent.
        MeasurementError: a setting is out of range (a ValueError).
    """
    from search_spaces.discover import discover
    from search_spaces.model_spec import load_model
    from search_spaces.plan import validate_plan
    from search_spaces.space import SearchSpace

    if processes < 0 or repeats < 1 or synthetic_layers < 0 or (plans is None and samples < 1):
        raise MeasurementError(
            "samples and repeats must be at least 1, processes and synthetic_layers at least 0 "
            f"(got samples={samples}, repeats={repeats}, processes={processes}, "
            f"synthetic_layers={synthetic_layers})"
        )
    if inputs is not None:
        inputs = str(Path(inputs).resolve())  # the measuring processes may start elsewhere
    loaded = load_model(model, input_shape=input_shape, pretrained=False, inputs=inputs)
    shape = tuple(loaded.example_inputs[0].shape)
    settings = _settings(model, list(shape), device, threads, runs, warmup, rounds)
    settings["inputs"] = inputs
    graph = discover(loaded.module, loaded.example_inputs, model_name=model)
    if plans is None:
        plans = random_plans(space or SearchSpace(graph), samples, seed=seed)
    plans = list(plans)
    for plan in plans:  # a bad plan fails here, in one line, not minutes later in a worker
        validate_plan(plan, graph)
    configs = plan_layer_configs(graph, plans)
    started = time.perf_counter()
    timed = _timed_rows(
        [{"plan": p.to_json()} for p in plans], settings, processes, repeats, "plans", progress
    )
    fingerprint = _fingerprint_columns(device, threads)
    shape_text = "x".join(str(v) for v in shape)
    macs = configs.macs.sum(axis=1)
    frame = pd.DataFrame(
        [
            {
                "record": "model",
                "model": model,
                "input_shape": shape_text,
                "plan": p.to_json(),
                "macs": int(macs[i]),
                **timed[i],
                **fingerprint,
            }
            for i, p in enumerate(plans)
        ]
    )
    timing = {
        "device": device,
        "threads": threads,
        "runs": runs,
        "warmup": warmup,
        "rounds": rounds,
        "processes": processes,
        "repeats": repeats,
        "progress": progress,
    }
    frames = [frame]
    if layers:
        unique, _ = configs.unique()
        frames.append(profile_layers(unique, source=model, **timing))
        frames[-1]["input_shape"] = shape_text
    if synthetic_layers:
        random_layers = synthetic_layer_configs(synthetic_layers, batch=shape[0], seed=seed)
        frames.append(profile_layers(random_layers, **timing))
    frame = pd.concat(frames, ignore_index=True)
    frame.attrs = {"profile_seconds": time.perf_counter() - started}
    return frame
