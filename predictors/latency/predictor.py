"""`LatencyPredictor`: the interface every latency predictor keeps, and what they share.

- `fit(records)`: learn from latency records (`profile`'s DataFrame);
- `predict(graph, plans)`: milliseconds for a batch of plans of one model (`Plan`s or a
  `LatencyBatch`), as a numpy array; `predict_ratio` the same over the uncompressed model;
- `to_document()` / `save(path)`: a JSON document (weights as lists of numbers), so that a saved
  predictor outlives library upgrades, unlike a pickled regressor (`predictors.latency.models`
  reads it back).

Predictions work per distinct layer configuration (`LayerConfigs.unique`) and sum per plan, so a
batch of ten thousand plans costs a few thousand layer evaluations. The kinds live in modules of
their own (`flops`, `lookup`, `network`); the records → training-set steps they share in
`predictors.latency.training_sets`.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from predictors.latency.features import LatencyBatch, LayerConfigs, plan_layer_configs
from predictors.latency.training_sets import (
    ModelRecords,
    PredictorError,
    measured_references,
    model_label,
    record_graphs,
    records_fingerprint,
    target_column,
    unit_ms_of,
)
from search_spaces.graph import UNNAMED_MODEL, ModelGraph
from search_spaces.output_file import write_text_atomically
from search_spaces.plan import Plan

__all__ = ["FORMAT", "READS", "VERSION", "LatencyPredictor", "Plans"]

FORMAT = "compplan-latency-predictor"
VERSION = 3  # 2: no in-model correction in the network; 3: an ensemble, the quantizer head
READS = (2, 3)  # a version-2 network is an ensemble of one member

Plans = Sequence[Plan] | LatencyBatch

logger = logging.getLogger("compplan")
_warned_extrapolated: set[str] = set()  # once a process: a search loads its predictor twice


class LatencyPredictor:
    """Base of the predictors: fit on records, predict milliseconds for plans, save as JSON.

    The contract every predictor keeps (`tests/predictors/test_predictor_contract.py` checks it
    for every kind in `PREDICTOR_KINDS`):

    - `fit(records)` returns the predictor, fit; `predict` before it raises `PredictorError`;
    - `predict(graph, plans)` gives one finite, positive float per plan, the same for a list of
      `Plan`s, their `LatencyBatch` and each plan alone;
    - `save` then `load_predictor` gives a predictor with the same predictions;
    - `additive` (declared by each subclass, not inherited): True when a prediction is a
      constant per model plus a sum over the plan's layers of a function of that layer's
      deployed configuration alone. Then, with every keep ratio at 1 (so that one layer's
      choice changes only its own configuration), the prediction of a plan is the base plan's
      plus the sum over layers of the change when that layer alone takes its choice: what the
      exact solver (`Planner.exact`) relies on to budget latency as a knapsack. A predictor
      that models interactions between layers (fusion, caches) declares False, and the exact
      solver must not budget latency with it. Subclasses implement `_fit`, `_predict`,
      `_state` and `_load_state`.

    What it learns is the ratio. Records carry each plan's ratio to the uncompressed model
    (measured interleaved, so the machine's speed phases cancel), the uncompressed model's ratio
    to a fixed calibration module (measured interleaved too), and their product, the time in
    calibration-module units, which single layers have as well: a subclass fits those units
    (`unit`), one scale for every record, layers and models alike. (Records of an older
    compplan have no units: then milliseconds, each model's ratios scaled by one constant.)
    `predict_ratio` is a plan's prediction over the uncompressed plan's; `predict` is that ratio
    times the model's reference: the time measured with the records (`references`, kept in the
    predictor's file) for a model they hold, the uncompressed plan's prediction (× `unit_ms`)
    for any other. Both keep `additive`: the ratio divides a model's every prediction by the
    same constant.
    """

    kind: ClassVar[str] = ""
    additive: ClassVar[bool] = False

    def __init__(self) -> None:
        self.fingerprint: dict[str, Any] = {}
        self.references: dict[str, float] = {}  # "model@input shape" → ms, as measured
        self.unit = "latency_ms"  # the record column fit: "units" or "latency_ms"
        self.unit_ms = 1.0  # milliseconds of one unit
        self.fitted = False
        self._uncompressed: dict[tuple[str, str], float] = {}
        self._contiguous = False  # `additive_part`

    def fit(
        self,
        records: pd.DataFrame,
        *,
        graphs: dict[tuple[str, str], ModelGraph] | None = None,
        trust_specs: bool = False,
    ) -> LatencyPredictor:
        """Learn from `records`; `graphs` ((model, input_shape) → graph) saves rediscovering.
        `trust_specs`: build the models of records whose spec runs code (`record_graphs`).

        Raises:
            PredictorError: the records are from several devices, lack what this predictor
                needs, or name code specs without `trust_specs` (or their `graphs`).
        """
        if records.empty:
            raise PredictorError("no records to fit on")
        self.fingerprint = records_fingerprint(records)
        graphs = record_graphs(records, graphs, trusted=trust_specs)
        self.references = measured_references(records, graphs)
        self.unit = target_column(records)
        self.unit_ms = unit_ms_of(records, self.unit)
        self._uncompressed = {}
        self._fit(records, graphs)
        self.fitted = True
        return self

    def predict(self, graph: ModelGraph, plans: Plans) -> np.ndarray:
        """Predicted latency in ms of each plan of `graph`'s model (float64 array): the
        predicted ratio times the model's reference (`reference_ms`)."""
        return self.predict_ratio(graph, plans) * self.reference_ms(graph)[0]

    def predict_ratio(self, graph: ModelGraph, plans: Plans) -> np.ndarray:
        """Each plan's predicted latency over the uncompressed model's (float64 array)."""
        if not self.fitted:
            raise PredictorError(f"the {self.kind} predictor is not fit yet")
        configs = plan_layer_configs(graph, plans)
        if self._contiguous:
            configs = configs.contiguous()
        return self._predict(graph, configs) / self._base_of(graph)

    @property
    def runtime(self) -> str:
        """The runtime the records it was fit on were timed on ("torch" for a predictor fit
        before records named one)."""
        return str(self.fingerprint.get("runtime", "torch"))

    def require_runtime(self, runtime: str) -> None:
        """Refuse to price plans for another runtime than the records were timed on.

        Raises:
            PredictorError: `runtime` is not this predictor's, in one line that says what to do.
        """
        if runtime != self.runtime:
            raise PredictorError(
                f"the latency predictor was fit on records timed on {self.runtime}, not "
                f"{runtime}: profile and fit one with `--runtime {runtime}`, or pass "
                f"--runtime {self.runtime}"
            )

    def additive_part(self) -> LatencyPredictor:
        """This predictor, or, where it is not additive (it prices the boundaries between
        kernel classes), a copy that prices every layer as if its neighbours shared its kernel
        class: additive, what the exact solver budgets with before the full predictor checks
        its answer (`planner.solver`)."""
        if self.additive:
            return self
        part = copy.copy(self)
        part._contiguous, part.additive = True, True
        return part

    def reference_ms(self, graph: ModelGraph) -> tuple[float, str]:
        """The uncompressed model's latency that ratios are times of, and where it comes
        from: "measured" (with the records, for a model they hold) or "predicted"."""
        label = self._label(graph)
        if label in self.references:
            return self.references[label], "measured"
        return self._base_of(graph) * self.unit_ms, "predicted"

    def _label(self, graph: ModelGraph) -> str:
        """The model's label (`model_label`), or the spelt spec an older predictor's references
        hold a model of a .py file by."""
        label = model_label(graph)
        first = next(iter(graph.layers.values()))
        spelt = f"{graph.model_name}@{'x'.join(map(str, first.input_shape))}"
        return spelt if label not in self.references and spelt in self.references else label

    def _base_of(self, graph: ModelGraph) -> float:
        """The raw prediction of `graph`'s uncompressed plan (every layer as it is). The first
        time in a process for a model the records hold no plan of, warns that its ratios are
        extrapolated."""
        label = self._label(graph)
        key = (label, graph.fingerprint)
        if key not in self._uncompressed:
            if label not in self.references and label not in _warned_extrapolated:
                _warned_extrapolated.add(label)
                # A graph discovered without a name (Python's default) never matches records,
                # which name the model by its spec: say so before the advice to measure it.
                unnamed = (
                    f"; if the records hold it by its spec ({', '.join(sorted(self.references))}), "
                    "name the graph so (Planner(..., model_spec=SPEC), discover(..., "
                    "model_name=SPEC))"
                    if graph.model_name == UNNAMED_MODEL
                    else ""
                )
                logger.warning(
                    "the latency predictor's records hold no plan of %s, so its latency is "
                    "extrapolated from other models and may miss by more than 10%%%s: measure "
                    "its uncompressed plan (compplan profile --uncompressed-only, seconds) and "
                    "fit again with that record beside records of models of its block kinds "
                    "(README, Latency: the zoo families), or profile it",
                    label,
                    unnamed,
                )
            configs = plan_layer_configs(graph, [Plan(layers={})])
            self._uncompressed[key] = float(self._predict(graph, configs)[0])
        return self._uncompressed[key]

    def predict_records(
        self,
        records: pd.DataFrame,
        *,
        graphs: dict[tuple[str, str], ModelGraph] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(predicted, measured) ms for the model records, in their order (any models)."""
        if not self.fitted:
            raise PredictorError(f"the {self.kind} predictor is not fit yet")
        models = ModelRecords(records, graphs, "latency_ms")
        predicted, measured = np.empty(len(models)), np.empty(len(models))
        for (_, graph, configs, y), at in zip(models.sets, models.positions, strict=True):
            scale = self.reference_ms(graph)[0] / self._base_of(graph)
            predicted[at], measured[at] = self._predict(graph, configs) * scale, y
        return predicted, measured

    def to_document(self) -> dict[str, Any]:
        """The predictor as a JSON-ready document (what `save` writes, and what a study's
        `SearchConfig` embeds so that workers need no predictor file)."""
        if not self.fitted:
            raise PredictorError("fit the predictor before saving it")
        return {
            "format": FORMAT,
            "version": VERSION,
            "kind": self.kind,
            "fingerprint": self.fingerprint,
            "references": dict(self.references),
            "unit": self.unit,
            "unit_ms": self.unit_ms,
            "state": self._state(),
        }

    def save(self, path: str | Path) -> Path:
        """Write the predictor as JSON."""
        return write_text_atomically(path, json.dumps(self.to_document()), "the predictor file")

    # subclasses
    def _fit(self, records: pd.DataFrame, graphs) -> None:
        raise NotImplementedError

    def _predict(self, graph: ModelGraph, configs: LayerConfigs) -> np.ndarray:
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError
