"""`FlopsPredictor`: the baseline, latency linear in the deployed MACs."""

from __future__ import annotations

import numpy as np

from predictors.latency.predictor import LatencyPredictor
from predictors.latency.training_sets import ModelRecords, PredictorError

__all__ = ["FlopsPredictor"]


class FlopsPredictor(LatencyPredictor):
    """Latency linear in the deployed MACs: `a · MACs + b`, fit for the least relative error
    (`ms_per_mac` and `offset_ms` are in the predictor's `unit`: per calibration-module unit for
    records that have units)."""

    kind = "flops"
    additive = True  # a·ΣMACs + b: a sum of per-layer terms and a constant

    def _fit(self, records, graphs) -> None:
        models = ModelRecords(records, graphs, self.unit)
        if len(models) < 2:
            raise PredictorError("the FLOPs baseline needs at least 2 model records")
        macs = np.concatenate([c.macs.sum(axis=1) for _, _, c, _ in models.sets]).astype(float)
        y = np.concatenate([y for *_, y in models.sets])
        design = np.stack([macs / y, 1 / y], axis=1)
        (self.ms_per_mac, self.offset_ms), *_ = np.linalg.lstsq(design, np.ones_like(y), rcond=None)

    def _predict(self, graph, configs) -> np.ndarray:
        return self.ms_per_mac * configs.macs.sum(axis=1).astype(float) + self.offset_ms

    def _state(self):
        return {"ms_per_mac": float(self.ms_per_mac), "offset_ms": float(self.offset_ms)}

    def _load_state(self, state):
        self.ms_per_mac, self.offset_ms = state["ms_per_mac"], state["offset_ms"]
