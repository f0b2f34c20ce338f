"""Latency records of a made-up device, built without timing anything: the predictors' answer is
known, and the records are ready in milliseconds."""

from __future__ import annotations

import numpy as np
import pandas as pd

from predictors.latency import LayerConfigs
from predictors.latency.features import plan_layer_configs
from search_spaces.plan import Plan

__all__ = ["OVERHEAD_MS", "known_latency", "known_records"]

OVERHEAD_MS = 0.3  # the made-up device's time per model call outside its layers


def known_latency(configs: LayerConfigs) -> np.ndarray:
    """A made-up device: 2 ns per MAC, 0.05 ms per layer, 0.1 ms per quantized input."""
    return 2e-6 * configs.macs + 0.05 + 0.1 * (configs.act_bits < 32)


def known_records(
    graph,
    plans,
    *,
    model: str = "zoo:digits",
    input_shape: str = "1x1x8x8",
    device: str = "cpu",
    model_phase: float = 1.0,
    units: bool = True,
    runtime: str | None = None,
) -> pd.DataFrame:
    """Records as `profile` writes them, of a device whose times are `known_latency` summed plus
    `OVERHEAD_MS` per model: one "model" row per plan (its ratio to the uncompressed plan, whose
    time is the reference), then one "layer" row per distinct layer configuration of the plans
    (against a calibration module of 1 ms).

    `model_phase`: the machine ran that many times slower while the plans were measured than
    while the layers were: the plans' milliseconds carry it, their ratios and calibration units
    (`units`; False drops those columns, as in an older compplan's records) do not.
    `runtime`: the records' runtime column (None: none, as an older compplan's: torch)."""
    configs = plan_layer_configs(graph, plans)
    totals = known_latency(configs).sum(axis=1) + OVERHEAD_MS
    reference = known_latency(plan_layer_configs(graph, [Plan(layers={})])).sum() + OVERHEAD_MS
    fingerprint = {"device": device, "cpu": "test", "threads": 1, "torch": "x", "gpu": ""}
    if runtime is not None:
        fingerprint["runtime"] = runtime
    where = {"model": model, "input_shape": input_shape}
    rows = [
        {
            "record": "model",
            **where,
            "plan": p.to_json(),
            "latency_ms": t * model_phase,
            "ratio": t / reference,
            "reference": "model",
            "reference_ms": reference * model_phase,
            "reference_units": reference,  # the calibration module takes 1 ms
            "units": t,
            **fingerprint,
        }
        for p, t in zip(plans, totals, strict=True)
    ]
    unique, _ = configs.alone().unique()
    for i, ms in enumerate(known_latency(unique)):
        config = {k: int(v[i]) for k, v in unique.columns().items()}
        calibration = {"ratio": ms, "reference": "calibration", "reference_ms": 1.0}
        calibration |= {"reference_units": 1.0, "units": ms}
        rows.append(
            {
                "record": "layer",
                **where,
                "plan": "",
                "latency_ms": ms,
                **calibration,
                **config,
                **fingerprint,
            }
        )
    frame = pd.DataFrame(rows)
    return frame if units else frame.drop(columns=["reference_units", "units"])
