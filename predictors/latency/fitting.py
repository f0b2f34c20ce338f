"""Fitting a latency predictor on records, with its accuracy on held-out plans.

`fit_predictor` is what `compplan fit-latency` runs: split the plans, fit on the training part,
score the held-out plans, then fit again on everything. In Python:

    from predictors.latency import fit_predictor, load_records
    report = fit_predictor(load_records("digits.parquet"), "lookup", holdout=0.2)
    report.predictor.save("latency.json")

The split is by plan, and a plan's single-layer records go with it: `profile` times each distinct
layer configuration of the plans it measures, so a held-out plan's layers, timed alone, would
otherwise tell a lookup table the answer (every held-out layer found in the table, the figure as
good as the table's sums on the training plans).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from predictors.latency.features import BASE_COLUMNS, plan_layer_configs
from predictors.latency.models import (
    PREDICTOR_KINDS,
    LatencyPredictor,
    PredictorError,
    make_predictor,
    record_graphs,
)
from search_spaces.graph import ModelGraph
from search_spaces.plan import Plan

__all__ = ["FitReport", "HoldoutScore", "fit_predictor", "holdout_split"]

_KEY = BASE_COLUMNS  # a layer record is of a layer alone: its own columns
Graphs = dict[tuple[str, str], ModelGraph]


@dataclass(frozen=True)
class HoldoutScore:
    """How well a predictor priced plans it was not fit on.

    Attributes:
        plans: held-out plans.
        within_10pct: share of them predicted within ±10% of what was measured (nn-Meter's
            measure).
        mape: mean absolute relative error.
    """

    plans: int
    within_10pct: float
    mape: float

    @classmethod
    def of(cls, predicted: np.ndarray, measured: np.ndarray) -> HoldoutScore:
        error = np.abs(np.asarray(predicted) / np.asarray(measured) - 1)
        return cls(len(error), float(np.mean(error <= 0.1)), float(np.mean(error)))


@dataclass(frozen=True)
class FitReport:
    """A predictor fit on all the records, and its score on held-out plans.

    Attributes:
        predictor: fit on every record (save it with `predictor.save(path)`).
        kind: the predictor's kind.
        records: records fit on; plans: the model records among them.
        holdout: the score of a predictor fit without the held-out plans, or None (holdout 0).
        fit_seconds: the time of the final fit.
    """

    predictor: LatencyPredictor
    kind: str
    records: int
    plans: int
    holdout: HoldoutScore | None
    fit_seconds: float

    def to_dict(self) -> dict:
        """JSON-ready: kind, records, plans, holdout (when scored), fit_seconds, device."""
        document = {"kind": self.kind, "records": self.records, "plans": self.plans}
        if self.holdout is not None:
            document["holdout"] = {
                "plans": self.holdout.plans,
                "within_10pct": self.holdout.within_10pct,
                "mape": self.holdout.mape,
            }
        return {**document, "fit_seconds": self.fit_seconds, "device": self.predictor.fingerprint}


def _configurations(graph: ModelGraph, plans: list[Plan]) -> set[tuple[int, ...]]:
    """The distinct layer configurations of `plans`, as tuples of the `LayerConfigs` columns."""
    if not plans:
        return set()
    columns = plan_layer_configs(graph, plans).columns()
    return set(zip(*(columns[k].reshape(-1).tolist() for k in _KEY), strict=True))


def holdout_split(
    records: pd.DataFrame, share: float, *, seed: int = 0, graphs: Graphs | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split records into (train, test) by plan: `share` of the model records, drawn with
    `seed` (at least one), are held out, and so are the layer records that belong to held-out
    plans only.

    A layer record belongs to the plans of its model and input shape that contain its
    configuration (`profile` times each distinct configuration once, for every plan that has
    it). One that a training plan also contains stays in training: it was measured for that
    plan too. Layer records of no profiled plan (synthetic layers) stay in training. The two
    parts partition `records` and keep their order.

    Raises:
        PredictorError: `share` is not in (0, 1), or fewer than 2 model records.
    """
    if not 0 < share < 1:
        raise PredictorError(f"the held-out share must be in (0, 1) (got {share})")
    kinds = records["record"].to_numpy()
    models = np.flatnonzero(kinds == "model")
    if len(models) < 2:
        raise PredictorError("holding plans out needs at least 2 model records")
    order = np.random.default_rng(seed).permutation(len(models))
    held = np.zeros(len(records), dtype=bool)
    held[models[order[: max(1, round(share * len(models)))]]] = True
    layers = np.flatnonzero(kinds == "layer")
    if len(layers) == 0:
        return records[~held], records[held]
    columns = records.iloc[layers][list(_KEY)].to_numpy(float).astype(np.int64)
    layer_keys = [tuple(row) for row in columns.tolist()]
    source = list(zip(records["model"], records["input_shape"], strict=True))
    graphs = record_graphs(records, graphs)
    for model in dict.fromkeys(source[i] for i in models):
        plans = {
            part: [
                Plan.from_json(records["plan"].iat[i])
                for i in models
                if source[i] == model and held[i] == part
            ]
            for part in (True, False)
        }
        graph = graphs[model]
        only_held = _configurations(graph, plans[True]) - _configurations(graph, plans[False])
        for i, key in zip(layers, layer_keys, strict=True):
            if source[i] == model and key in only_held:
                held[i] = True
    return records[~held], records[held]


def fit_predictor(
    records: pd.DataFrame,
    kind: str = "network",
    *,
    holdout: float = 0.2,
    seed: int = 0,
    graphs: Graphs | None = None,
    trust_specs: bool = False,
    **options,
) -> FitReport:
    """Fit a predictor of `kind` on `records`, scored on held-out plans first.

    Args:
        records: latency records (`profile`, `load_records`).
        kind: "network", "lookup" or "flops" (`make_predictor`).
        holdout: share of the plans to hold out (with their own layer records, see
            `holdout_split`) for the score; 0 skips it.
        seed: seeds the split and, for predictors that take one, the fit.
        graphs: (model, input shape) → graph, to skip rediscovering the models.
        trust_specs: build the models of records whose spec runs code (`record_graphs`);
            records of zoo models, or of models in `graphs`, need no trust.
        **options: the predictor's own settings (for example `steps` of the network).

    Raises:
        PredictorError: `holdout` is not in [0, 1), an unknown kind, records the predictor
            cannot fit on, or of code specs without `trust_specs`.
    """
    if not 0 <= holdout < 1:
        raise PredictorError(f"the held-out share must be in [0, 1) (got {holdout})")
    cls = PREDICTOR_KINDS.get(kind)
    if cls is not None and "seed" in inspect.signature(cls).parameters:
        options = {"seed": seed, **options}
    graphs = record_graphs(records, graphs, trusted=trust_specs)  # once, for both fits
    score = None
    if holdout > 0:
        train, test = holdout_split(records, holdout, seed=seed, graphs=graphs)
        held = make_predictor(kind, **options).fit(train, graphs=graphs)
        score = HoldoutScore.of(*held.predict_records(test, graphs=graphs))
    started = time.perf_counter()
    predictor = make_predictor(kind, **options).fit(records, graphs=graphs)
    return FitReport(
        predictor=predictor,
        kind=kind,
        records=len(records),
        plans=int((records["record"] == "model").sum()),
        holdout=score,
        fit_seconds=time.perf_counter() - started,
    )
