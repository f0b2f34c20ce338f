"""Profiling: measured latencies of deployed plans and of single layers, as records.

`profile` draws random plans of a model (or takes the user's) and the structured ones users ask
for (`structured_plans`), builds each plan's deployed form (`engine.deploy.deployed_structure`:
channels pruned, activation quantizers in place, BatchNorm folded, weights dense) and times it
interleaved with the uncompressed deployed model (`predictors.profile.measure_relative`): a
record's figure is the ratio, which the machine's speed phases do not move, and its milliseconds
are the ratio times the reference's quiet time over the run (`with_latency_ms`). It also times,
alone, every distinct layer configuration those plans contain, against a fixed calibration module:
the lookup table's entries and the network's per-layer supervision; and the uncompressed model
against the calibration module (the link), so that every record has a time in one unit, the
calibration module's (`units`), that runs in different phases of the machine share. `profile_layers`
times any list of layer configurations, for example the random ones of
`synthetic_layer_configs`, which teach the network layer kinds no profiled model has.

Measurements run in fresh processes, one at a time (`processes`); `repeats` > 1 measures every plan
in that many different processes and keeps the median ratio. With `processes=0` all runs in this
process (tests, quick looks).

This and `runtime_forms` (the ONNX files a measuring process times on ONNX Runtime) are where
`predictors` reaches into `engine`: the deployed form is the engine's to build, and a latency is
only true of what really runs. The imports are local to the functions that measure, so
predicting never loads the engine.
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
from predictors.latency.records import DEPLOYED_FORM
from predictors.latency.runtime_forms import ProfileError, RuntimeForms, kernels_text
from predictors.latency.sampling import (
    STRUCTURED_KEEPS,
    config_macs,
    int8_region_plans,
    kernel_mix_plans,
    random_plans,
    structured_plans,
    synthetic_layer_configs,
)
from predictors.profile import BLOCKS, MIN_TIME_MS, MeasurementError, device_fingerprint
from predictors.runtimes import RUNTIMES
from search_spaces.plan import Plan

__all__ = [
    "STRUCTURED_KEEPS",
    "ProfileError",
    "profile",
    "profile_layers",
    "random_plans",
    "structured_plans",
    "synthetic_layer_configs",
]

_CONFIG_COLUMNS = tuple(LayerConfigs.__dataclass_fields__)


# -- building and timing (run inside the measuring process) --------------------------------------


def _side(elements: int) -> int:
    side = math.isqrt(elements)
    return side if side * side == elements else elements


def _layer_module(config: dict[str, int], device: str):
    """A single layer as the deployed form runs it, and the shape of its input."""
    from torch import nn

    from search_spaces.methods import AUTO_ACTIVATION, activation_method_for, deployed_layer

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
    # Latency configurations know bits, not methods: 8 bits is u8 (int8 kernels), as "auto".
    bits = config["act_bits"]
    activations = activation_method_for(AUTO_ACTIVATION, bits).config(bits)
    return deployed_layer(layer.to(device), activations).eval(), tuple(shape)


def _calibration_module(device: str):
    """The fixed yardstick single layers and the link are timed against: two 3×3 convolutions
    on 32×32 maps (14 MMACs, 0.3–0.4 ms on one thread of this 2-core CPU), and its input. Its
    time is the unit of every record's `units`: change it and records made before and after no
    longer share a scale."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)
    )
    return module.to(device).eval(), (torch.randn(1, 16, 32, 32, device=device),)


def _measure_jobs(
    jobs: list[dict],
    settings: dict,
    report: Callable[[int, dict], None],
    progress: Callable[[], None] = lambda: None,
) -> None:
    """Time each job ({"plan": json}, {"layer": config} or {"link": True}) against its
    reference; report(index, timing dict) once every round of it is done, and progress() after
    each job's round.

    A plan is timed interleaved with the uncompressed deployed model (same spec, inputs, batch,
    threads, device: `predictors.profile.measure_relative`; the model timed for at least
    `settings["min_time_ms"]` over all rounds, more blocks for a fast one), a single layer
    with the fixed calibration module (`_calibration_module`), and the link, the uncompressed
    deployed model with the calibration module: each job's figure is its ratio. Its blocks are
    split into `settings["rounds"]` rounds that go over every job in turn, each round with the
    module and the reference built afresh, so that a figure spans the run's phases and no one
    build's memory layout sets it. The timing dict holds the ratio, its spread, the reference and
    its quiet time in this measurement, and the absolute median for comparison.
    """
    import torch

    from engine.deploy import deployed_structure
    from predictors.profile import RelativeTiming, measure_relative
    from search_spaces.discover import discover
    from search_spaces.model_spec import load_model

    torch.manual_seed(0)
    device, threads = settings["device"], settings["threads"]
    on_runtime = RuntimeForms(settings.get("runtime", "torch"), threads)
    model: list = []  # [loaded model, graph], built on the first plan job
    inputs_by_shape: dict[tuple, Any] = {}
    rounds = max(1, min(settings.get("rounds", 1), settings["blocks"]))
    # A plan's least time over all its rounds, shared out; single layers and the link keep
    # their block count (the calibration module is short, the count would time the other side
    # for minutes; hundreds of layers are profiled).
    min_time_ms = settings.get("min_time_ms", 0.0) / rounds

    def reference_of(job: dict):
        """(the reference job's reference, its inputs, its name), built afresh."""
        if "layer" in job or "link" in job:
            module, inputs = _calibration_module(device)
            return on_runtime("calibration", lambda: module, inputs), inputs, "calibration"
        loaded, graph = model_and_graph()

        def uncompressed():
            structure = Plan(layers={}), loaded.example_inputs
            return deployed_structure(loaded.module, *structure, graph=graph).to(device)

        inputs = inputs_of(loaded)
        return on_runtime("model", uncompressed, inputs), inputs, "model"

    def model_and_graph():
        if not model:
            loaded = load_model(
                settings["model"],
                input_shape=settings["input_shape"],
                pretrained=False,
                inputs=settings.get("inputs"),
            )
            graph = discover(loaded.module, loaded.example_inputs, model_name=settings["model"])
            model.extend([loaded, graph])
        return model

    def inputs_of(loaded):
        return tuple(t.to(device) for t in loaded.example_inputs)

    def build(index: int, job: dict):
        """(the job's module, its inputs)."""
        if "layer" in job:
            module, shape = _layer_module(job["layer"], device)
            if shape not in inputs_by_shape:
                inputs_by_shape[shape] = torch.randn(*shape, device=device)
            inputs = (inputs_by_shape[shape],)
            return on_runtime(f"job{index}", lambda: module, inputs), inputs
        loaded, graph = model_and_graph()
        plan = Plan(layers={}) if "link" in job else Plan.from_json(job["plan"])

        def structure():
            built = deployed_structure(loaded.module, plan, loaded.example_inputs, graph=graph)
            return built.to(device)

        inputs = inputs_of(loaded)
        return on_runtime(f"job{index}", structure, inputs), inputs

    parts: list[list] = [[] for _ in jobs]
    names: list[str] = [""] * len(jobs)
    per_round = [
        settings["blocks"] // rounds + (r < settings["blocks"] % rounds) for r in range(rounds)
    ]
    for blocks in per_round:
        references: dict[str, tuple] = {}  # built afresh each round
        for index, job in enumerate(jobs):
            kind = "plan" if "plan" in job else "calibration"
            if kind not in references:
                references[kind] = reference_of(job)
            reference, reference_inputs, names[index] = references[kind]
            module, inputs = build(index, job)
            parts[index].append(
                measure_relative(
                    module,
                    reference,
                    inputs,
                    blocks=blocks,
                    calls=settings["calls"],
                    warmup=settings["warmup"],
                    threads=threads,
                    reference_inputs=reference_inputs,
                    min_blocks=1,
                    min_time_ms=min_time_ms if kind == "plan" else 0.0,
                    # A single layer's blocks open without an untimed call: they fill 2 ms
                    # with many calls, and spread no more for it (`scripts/bench_protocol.py`:
                    # half the time).
                    block_warmup=0 if "layer" in job else 1,
                )
            )
            progress()
    on_runtime.close()
    for index, job_parts in enumerate(parts):
        timing = RelativeTiming.combine(job_parts)
        report(
            index,
            {
                "ratio": timing.ratio,
                "spread": timing.spread,
                "reference": names[index],
                "measured_reference_ms": timing.reference_ms,
                "median_ms": timing.median_ms,
                "min_ms": min(timing.module_ms),
                "max_ms": max(timing.module_ms),
                "runs": len(timing.module_ms),
                # Each planned layer's kernel class on the runtime ("int8", "fp32"; a single
                # layer's under "layer"), as the exported file ran it; "" on torch.
                "kernels": kernels_text(on_runtime.kernels.get(f"job{index}")),
            },
        )


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


def _settings(
    model,
    input_shape,
    device,
    threads,
    blocks,
    calls,
    warmup,
    rounds,
    min_time_ms=0.0,
    runtime="onnxruntime",
) -> dict:
    if blocks < 4 or calls < 1 or warmup < 0 or not 1 <= rounds <= blocks or min_time_ms < 0:
        raise MeasurementError(
            "a relative measurement takes at least 4 blocks of at least 1 call, in 1 to blocks "
            "rounds, and warmup and min_time_ms 0 or more (got "
            f"blocks={blocks}, calls={calls}, rounds={rounds}, warmup={warmup}, "
            f"min_time_ms={min_time_ms})"
        )
    if threads < 1:
        raise MeasurementError(f"threads must be at least 1 (got {threads})")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ProfileError(f"device '{device}' was asked for, but torch sees no CUDA device")
    elif device != "cpu":
        raise MeasurementError(f"device must be 'cpu' or 'cuda[:N]' (got '{device}')")
    if runtime not in RUNTIMES:
        raise MeasurementError(f"runtime '{runtime}': choose one of {', '.join(RUNTIMES)}")
    if runtime == "onnxruntime" and device != "cpu":
        raise MeasurementError(
            f"onnxruntime is profiled on the CPU here (got device '{device}'): pass --runtime "
            "torch to time a GPU"
        )
    return {
        "model": model,
        "input_shape": input_shape,
        "device": device,
        "threads": threads,
        "blocks": blocks,
        "calls": calls,
        "warmup": warmup,
        "rounds": rounds,
        "min_time_ms": min_time_ms,
        "runtime": runtime,
    }


def _progress(total: int, label: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label, unit="run", disable=not enabled, leave=False)


def _timed_rows(jobs, settings, processes, repeats, label, progress) -> list[dict]:
    """One row of timing columns per job: the median ratio over `repeats` processes, and the
    ratio in milliseconds (`with_latency_ms`)."""
    bar = _progress(len(jobs) * repeats * settings["rounds"], label, progress)
    per_repeat = []
    try:
        for _ in range(repeats):
            per_repeat.append(_run_jobs(jobs, settings, processes, lambda: bar.update(1)))
    finally:
        bar.close()
    rows = []
    for j in range(len(jobs)):
        ratios = [r[j]["ratio"] for r in per_repeat]
        middle = per_repeat[int(np.argsort(ratios)[len(ratios) // 2])][j]
        rows.append(
            {
                **middle,
                "ratio": float(np.median(ratios)),
                "repeats_ratio": json.dumps([round(r, 6) for r in ratios]),
            }
        )
    return with_latency_ms(rows)


def with_latency_ms(rows: list[dict]) -> list[dict]:
    """`rows` with `reference_ms` and `latency_ms`: each reference's time for the whole run (the
    median of its quiet times over the run's measurements) and each ratio times it.

    One time per reference for the run, not each measurement's own: the ratios of one model's
    plans then scale by one constant, and what a predictor learns from them is their ratios."""
    quiet: dict[str, list[float]] = {}
    for row in rows:
        quiet.setdefault(row["reference"], []).append(row["measured_reference_ms"])
    reference_ms = {name: float(np.median(times)) for name, times in quiet.items()}
    return [
        {
            **row,
            "reference_ms": reference_ms[row["reference"]],
            "latency_ms": row["ratio"] * reference_ms[row["reference"]],
        }
        for row in rows
    ]


def _in_calibration_units(ratio: float, reference_units: float) -> dict[str, float]:
    """A record's time in units of the calibration module's: its ratio to its reference times
    the reference's own ratio to the calibration module (the link, measured interleaved too).

    Every record of every run in one unit: a model's plans and its single layers, measured in
    different processes and phases, agree in scale, which is what lets a predictor learn from
    them together. The link cancels a phase less well than a plan's ratio where the model and
    the (compute-bound) calibration module differ in kind: across three runs it held within
    3% for ResNet-18 and digits but moved 47–57 for memory-bound MobileNetV2.
    `reference_ms` and `latency_ms` stay as they were measured."""
    return {"reference_units": reference_units, "units": ratio * reference_units}


def _fingerprint_columns(device: str, threads: int, runtime: str) -> dict[str, Any]:
    fingerprint = device_fingerprint(device, threads)
    return {
        "runtime": runtime,
        "device": fingerprint["device"],
        "cpu": fingerprint["cpu"],
        "threads": fingerprint["threads"],
        "torch": fingerprint["torch"],
        "gpu": fingerprint.get("gpu", ""),
        "deployed_form": DEPLOYED_FORM,
    }


def profile_layers(
    configs: LayerConfigs,
    *,
    device: str = "cpu",
    threads: int = 1,
    blocks: int = BLOCKS,
    calls: int = 3,
    warmup: int = 2,
    rounds: int = 3,
    processes: int = 1,
    repeats: int = 1,
    source: str = "synthetic",
    progress: bool = True,
    runtime: str = "onnxruntime",
) -> pd.DataFrame:
    """Time single layers (flat `configs`, each alone: its neighbour columns are `ALONE`'s)
    against the calibration module; one "layer" record per configuration (see `profile` for
    the columns)."""
    settings = _settings(
        None, None, device, threads, blocks, calls, warmup, rounds, runtime=runtime
    )
    flat = configs.reshape(-1).alone()
    rows_in = [{k: int(v[i]) for k, v in flat.columns().items()} for i in range(len(flat.kind))]
    timed = _timed_rows(
        [{"layer": r} for r in rows_in], settings, processes, repeats, "layers", progress
    )
    fingerprint = _fingerprint_columns(device, threads, runtime)
    rows = [
        {
            "record": "layer",
            "model": source,
            "input_shape": "",
            "plan": "",
            **config,
            "macs": config_macs(config),
            **timing,
            **_in_calibration_units(timing["ratio"], 1.0),
            **fingerprint,
        }
        for config, timing in zip(rows_in, timed, strict=True)
    ]
    return pd.DataFrame(rows)


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
    blocks: int = BLOCKS,
    calls: int = 3,
    warmup: int = 2,
    rounds: int = 3,
    min_time_ms: float = MIN_TIME_MS,
    processes: int = 1,
    repeats: int = 1,
    structured: bool = True,
    layers: bool = True,
    synthetic_layers: int = 0,
    progress: bool = True,
    runtime: str = "onnxruntime",
) -> pd.DataFrame:
    """Measure the deployed form of plans of `model`, and (with `layers`) their single layers.

    Args:
        model: a model spec ("zoo:resnet18", "pkg.module:factory", "file.py:factory"); it is
            rebuilt in each measuring process, untrained (latency depends on shapes only).
        input_shape: the input, batch first (the user's batch size); zoo models have a default.
        inputs: a data file whose `x` gives the example input instead, of its dtype (token ids;
            `search_spaces.data_file`), read again in each measuring process.
        plans: the plans to measure; None draws `samples` random plans of `space` (default: the
            full `SearchSpace` of the model) with `random_plans`, half of them on
            onnxruntime from `kernel_mix_plans` (int8 regions, alternating and single layers).
        device: "cpu" or "cuda[:N]".
        threads: torch's intra-op threads while timing.
        blocks, calls, warmup, rounds: each plan is timed interleaved with the uncompressed
            model in `blocks` blocks of `calls` timed calls each (`measure_relative`), split
            into `rounds` rounds over all plans (each after `warmup` untimed calls of both,
            the module and the reference built afresh), so that a figure spans the run; each
            layer likewise against a fixed calibration module.
        min_time_ms: the least time the uncompressed model is timed for in each plan's
            measurement: a fast model takes more blocks (`predictors.profile.MIN_TIME_MS`;
            0: `blocks` whatever they last). Single layers keep `blocks`.
        processes: split the work across this many fresh processes, run one at a time (0: here).
        repeats: measure everything this many times, in different processes; keep the median.
        structured: also measure the plans users ask for (`structured_plans`: uniform keeps,
            with and without 8-bit activations everywhere; on onnxruntime also
            `int8_region_plans`: int8 on all, the first half, the second half or every second
            layer), beside the random ones.
        layers: also time each distinct layer configuration of the plans alone.
        synthetic_layers: also time this many random single layers (`synthetic_layer_configs`
            at the input's batch size, seeded by `seed`; their `model` is "synthetic"): they
            teach the network layer kinds this model lacks.
        progress: show a progress bar.
        runtime: what runs the deployed forms ("onnxruntime", on the CPU: each form exported
            to ONNX once per measuring process, int8 where a layer has 8-bit activations, and
            a fresh session opened each round; "torch": PyTorch eager). Every record names it
            (`runtime`), and a predictor fit on them prices that runtime only.

    Returns:
        Records, one row per plan ("model") and per layer configuration ("layer"): the timing
        (`ratio` to the `reference` ("model": the uncompressed deployed model; "calibration"),
        its `spread` across blocks, `reference_ms` (the reference's quiet time over the run),
        `latency_ms` = ratio × reference_ms, the absolute `median_ms`, `min_ms`, `max_ms`,
        `runs` and `repeats_ratio`), the time in calibration-module units (`units` = ratio ×
        `reference_units`, the uncompressed model's ratio to the calibration module, measured
        interleaved in the same process: the scale predictors learn on, one for every record),
        the plan as JSON or the layer's configuration columns, deployed MACs, and the device
        fingerprint
        (`device`, `cpu`, `threads`, `torch`, `gpu`) and the `deployed_form` timed
        (`records.DEPLOYED_FORM`); a model record also has the input's
        `input_dtype` ("int64" for token ids). `attrs["profile_seconds"]` is the time
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
    settings = _settings(
        model, list(shape), device, threads, blocks, calls, warmup, rounds, min_time_ms, runtime
    )
    settings["inputs"] = inputs
    graph = discover(loaded.module, loaded.example_inputs, model_name=model)
    space = space or SearchSpace(graph)
    int8_kernels = runtime == "onnxruntime"
    if plans is None and int8_kernels:  # half of them mixing kernel classes on purpose
        mixed = kernel_mix_plans(space, samples // 2, seed=seed)
        plans = mixed + random_plans(space, samples - len(mixed), seed=seed)
    plans = list(random_plans(space, samples, seed=seed) if plans is None else plans)
    if structured:
        plans += structured_plans(space)
        if int8_kernels:
            plans += int8_region_plans(space)
    for plan in plans:  # a bad plan fails here, in one line, not minutes later in a worker
        validate_plan(plan, graph)
    configs = plan_layer_configs(graph, plans)
    started = time.perf_counter()
    jobs = [{"plan": p.to_json()} for p in plans] + [{"link": True}]
    *timed, link = _timed_rows(jobs, settings, processes, repeats, "plans", progress)
    fingerprint = _fingerprint_columns(device, threads, runtime)
    shape_text = "x".join(str(v) for v in shape)
    macs = configs.macs.sum(axis=1)
    frame = pd.DataFrame(
        [
            {
                "record": "model",
                "model": model,
                "input_shape": shape_text,
                "input_dtype": str(loaded.example_inputs[0].dtype).removeprefix("torch."),
                "plan": p.to_json(),
                "macs": int(macs[i]),
                **timed[i],
                **_in_calibration_units(timed[i]["ratio"], link["ratio"]),
                **fingerprint,
            }
            for i, p in enumerate(plans)
        ]
    )
    timing = {
        "device": device,
        "threads": threads,
        "blocks": blocks,
        "calls": calls,
        "warmup": warmup,
        "rounds": rounds,
        "processes": processes,
        "repeats": repeats,
        "progress": progress,
        "runtime": runtime,
    }
    frames = [frame]
    if layers:
        unique, _ = configs.alone().unique()
        frames.append(profile_layers(unique, source=model, **timing))
        frames[-1]["input_shape"] = shape_text
    if synthetic_layers:
        random_layers = synthetic_layer_configs(synthetic_layers, batch=shape[0], seed=seed)
        frames.append(profile_layers(random_layers, **timing))
    frame = pd.concat(frames, ignore_index=True)
    frame.attrs = {"profile_seconds": time.perf_counter() - started}
    return frame
