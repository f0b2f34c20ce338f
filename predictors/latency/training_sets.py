"""Latency records as training sets: the graphs of the models they name, each model's plans and
their targets, the single layers, and the scale (`units` or ms) a predictor fits them in.

What the predictors (`predictors.latency.flops`, `.lookup`, `.network`) share before any of them
learns; kept apart from them so that each reads as its own fit and prediction.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from predictors.latency.features import ALONE, LayerConfigs, plan_layer_configs
from predictors.latency.records import DEPLOYED_FORM, FINGERPRINT_COLUMNS
from search_spaces.graph import ModelGraph
from search_spaces.plan import Plan

__all__ = [
    "ModelRecords",
    "PredictorError",
    "input_elements",
    "layer_records",
    "measured_references",
    "model_identity",
    "model_label",
    "record_graphs",
    "records_fingerprint",
    "target_column",
    "unit_ms_of",
]

logger = logging.getLogger("compplan")


class PredictorError(ValueError):
    """A predictor that cannot be fit, loaded or used as asked; the message says why."""


def records_fingerprint(records: pd.DataFrame) -> dict[str, Any]:
    """The one device fingerprint every record shares, with the `runtime` they were timed on
    (records without the column: "torch"); records of several devices, runtimes or deployed
    forms are refused; records of an older deployed form are fit with a warning."""
    forms = sorted({int(form) for form in records.get("deployed_form", [DEPLOYED_FORM])})
    if len(forms) > 1:
        raise PredictorError(
            f"the records time {len(forms)} deployed forms ({', '.join(map(str, forms))}; "
            f"{DEPLOYED_FORM} is this compplan's): BatchNorms ran as their own step in the "
            "older ones, so they do not mix: profile those models again"
        )
    if forms[0] < DEPLOYED_FORM:
        logger.warning(
            "these records have no deployed_form 2 (measured by a compplan that ran each "
            "BatchNorm as its own step): models with BatchNorms now run faster than they say; "
            "profile them again"
        )
    runtimes = sorted(set(records.get("runtime", pd.Series(["torch"])).astype(str)))
    if len(runtimes) > 1:
        raise PredictorError(
            f"the records time {' and '.join(runtimes)}; a predictor is for one runtime: fit one "
            "per runtime (`compplan fit-latency --runtime`)"
        )
    devices = records[list(FINGERPRINT_COLUMNS)].astype(str).drop_duplicates()
    if len(devices) > 1:
        listed = "; ".join(", ".join(row) for row in devices.itertuples(index=False))
        raise PredictorError(
            f"the records come from {len(devices)} devices ({listed}); a predictor is for one "
            "device and thread count: fit one per device"
        )
    row = devices.iloc[0].to_dict()
    row["threads"] = int(row["threads"])
    row["runtime"] = runtimes[0]
    return row


def model_label(graph: ModelGraph) -> str:
    """The model and the shape of its first layer's input: "zoo:digits@1x1x8x8" (see
    `model_identity` for a model of a .py file)."""
    first = next(iter(graph.layers.values()))
    return f"{model_identity(graph)}@{'x'.join(map(str, first.input_shape))}"


def model_identity(graph: ModelGraph) -> str:
    """How records and predictors know a model: its spec ("zoo:digits", "pkg.mod:build"); a
    model of a .py file by the file's name, callable and structure fingerprint
    ("mynet.py:build#sha256:…"), not by the path it was spelt with, so that the same file named
    from another folder ("user/mynet.py:build") or moved is the same model, and another model in
    a file of that name is not."""
    where, sep, attr = graph.model_name.rpartition(":")
    if not (sep and where.endswith(".py")):
        return graph.model_name
    return f"{Path(where).name}:{attr}#{graph.fingerprint}"


def input_elements(graph: ModelGraph) -> int:
    """Elements of the first layer's input (the network's per-model overhead grows with it)."""
    first = next(iter(graph.layers.values()))
    return math.prod(first.input_shape)


def record_graphs(
    records: pd.DataFrame,
    graphs: dict[tuple[str, str], ModelGraph] | None = None,
    *,
    trusted: bool = False,
) -> dict[tuple[str, str], ModelGraph]:
    """The graph of every (model, input shape) the model records name: those in `graphs`, the
    others discovered from their model specs (structure only, nothing trained).

    Args:
        trusted: build models from specs that import and run code ("file.py:build", a
            package's callable). A records file is data, and anyone who can edit it chose its
            `model` column: without trust only zoo models are built (`compplan fit-latency
            --trust-specs`), or the graphs given.

    Raises:
        PredictorError: a spec of code without `trusted`.
    """
    from search_spaces.discover import discover
    from search_spaces.model_spec import load_model

    found = dict(graphs or {})
    rows = records[records["record"] == "model"]
    for (model, shape), group in rows.groupby(["model", "input_shape"], sort=False):
        if (model, shape) not in found:
            if not trusted and not str(model).startswith("zoo:"):
                raise PredictorError(
                    f"the records name the model spec {model!r}, which imports and runs code: "
                    "pass --trust-specs (trust_specs=True to fit or fit_predictor in Python) if "
                    "you trust the records"
                )
            loaded = load_model(
                model, input_shape=shape, pretrained=False, inputs=_example_ids(group, shape)
            )
            found[(model, shape)] = discover(loaded.module, loaded.example_inputs, model_name=model)
    return found


def _example_ids(rows: pd.DataFrame, shape: str):
    """Zero token ids of `shape` for a model the records say takes integer inputs (id 0 is in
    every vocabulary; discovery needs the shapes, not the values), else None (random floats)."""
    import torch

    dtype = str(rows["input_dtype"].iloc[0]) if "input_dtype" in rows else "float32"
    if not dtype.startswith(("int", "uint")):
        return None
    return torch.zeros(*map(int, shape.split("x")), dtype=getattr(torch, dtype))


def measured_references(records: pd.DataFrame, graphs) -> dict[str, float]:
    """Each model's reference time in `records` ("model@shape" → median ms), for records that
    carry one (an older compplan's have no ratio: then none)."""
    rows = records[records["record"] == "model"]
    if "reference_ms" not in rows or not rows["reference_ms"].notna().all():
        return {}
    found = {}
    for (model, shape), group in rows.groupby(["model", "input_shape"], sort=False):
        found[model_label(graphs[(model, shape)])] = float(group["reference_ms"].median())
    return found


def target_column(records: pd.DataFrame) -> str:
    """What a predictor fits: "units" (calibration-module units, one scale for every record:
    `profile`) where every record has them, else "latency_ms" (records of an older compplan,
    each run on the scale of its own phase)."""
    has_units = "units" in records and pd.to_numeric(records["units"], errors="coerce").gt(0).all()
    return "units" if has_units else "latency_ms"


def unit_ms_of(records: pd.DataFrame, column: str) -> float:
    """Milliseconds of one unit of `column`: the calibration module's quiet time as the records
    measured it (the median over records), or 1 for milliseconds."""
    if column == "latency_ms":
        return 1.0
    return float((records["latency_ms"].astype(float) / records["units"].astype(float)).median())


class ModelRecords:
    """Model records grouped by (model, input shape): graph, layer configs (plans × layers), the
    target (`column`: units or ms), and the records' positions among the model records."""

    def __init__(
        self,
        records: pd.DataFrame,
        graphs: dict[tuple[str, str], ModelGraph] | None,
        column: str,
    ):
        graphs = record_graphs(records, graphs)
        self.sets: list[tuple[str, ModelGraph, LayerConfigs, np.ndarray]] = []
        self.positions: list[np.ndarray] = []
        rows = records[records["record"] == "model"].reset_index(drop=True)
        for (model, shape), group in rows.groupby(["model", "input_shape"], sort=False):
            graph = graphs[(model, shape)]
            plans = [Plan.from_json(text) for text in group["plan"]]
            configs = plan_layer_configs(graph, plans)
            self.sets.append((model_label(graph), graph, configs, group[column].to_numpy(float)))
            self.positions.append(group.index.to_numpy())

    def __len__(self) -> int:
        return sum(len(y) for *_, y in self.sets)


def layer_records(records: pd.DataFrame, column: str) -> tuple[LayerConfigs, np.ndarray]:
    """The single-layer records' configurations and targets (`column`; none, for records of
    plans only: a file of those has no layer columns at all). Records without neighbour columns
    (an older compplan's) are of layers alone (`ALONE`), as every layer record is."""
    rows = records[records["record"] == "layer"]
    columns = {
        name: rows[name].to_numpy(float).astype(np.int64)
        if name in rows
        else np.full(len(rows), ALONE.get(name, 0), dtype=np.int64)
        for name in LayerConfigs.__dataclass_fields__
    }
    return LayerConfigs.from_columns(**columns), rows[column].to_numpy(float)
