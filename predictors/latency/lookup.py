"""`LookupTablePredictor`: each layer's time measured alone, summed, plus a per-model constant."""

from __future__ import annotations

import numpy as np
import pandas as pd

from predictors.latency.features import BASE_COLUMNS, LayerConfigs
from predictors.latency.predictor import LatencyPredictor
from predictors.latency.training_sets import (
    ModelRecords,
    PredictorError,
    layer_records,
    model_label,
)

__all__ = ["LookupTablePredictor"]

_KEY = BASE_COLUMNS  # a layer alone: no neighbours


class LookupTablePredictor(LatencyPredictor):
    """The sum of each layer's latency measured alone (NetAdapt, nn-Meter), plus a per-model
    constant for everything between layers (the median residual on the model records). It
    knows no neighbours: on a runtime with int8 kernels it misses what a boundary between
    kernel classes costs, which is why it is the baseline there.

    A configuration missing from the table takes the nearest measured one of the same kind
    (kernel, stride, depthwise or not, quantized input or not, batch; nearest in MACs), scaled by
    the ratio of MACs. `misses` counts such look-ups since the last `predict`.
    """

    kind = "lookup"
    additive = True  # per-configuration table entries summed, plus a per-model constant

    def _fit(self, records, graphs) -> None:
        layers, ms = layer_records(records, self.unit)
        if len(ms) == 0:
            raise PredictorError(
                "the lookup table needs single-layer records: profile with layers on "
                "(`compplan profile` does so unless --no-layers)"
            )
        frame = pd.DataFrame(layers.columns())
        frame["ms"] = ms
        table = frame.groupby(list(_KEY), sort=False)["ms"].median()
        self.table = {tuple(int(v) for v in key): float(value) for key, value in table.items()}
        self._index()
        self.overheads: dict[str, float] = {}
        models = ModelRecords(records, graphs, self.unit)
        for label, _, configs, y in models.sets:
            self.overheads[label] = float(np.median(y - self._sum(configs)))

    def _index(self) -> None:
        keys = np.asarray(list(self.table), dtype=np.int64).reshape(-1, len(_KEY))
        self._entries = LayerConfigs.from_columns(**dict(zip(_KEY, keys.T, strict=True)))
        self._entry_ms = np.asarray(list(self.table.values()), dtype=float)
        self.misses = 0

    def _lookup(self, unique: LayerConfigs) -> np.ndarray:
        out = np.empty(len(unique.kind), dtype=float)
        entries, entry_macs = self._entries, np.maximum(self._entries.macs, 1).astype(float)
        columns = unique.columns()
        for i in range(len(out)):
            key = tuple(int(columns[k][i]) for k in _KEY)
            value = self.table.get(key)
            if value is None:
                self.misses += 1
                value = self._nearest(unique.take(np.array([i])), entries, entry_macs)
            out[i] = value
        return out

    def _nearest(self, one: LayerConfigs, entries: LayerConfigs, entry_macs) -> float:
        macs = float(max(one.macs[0], 1))
        depthwise = lambda c: (c.groups > 1) & (c.groups == c.c_in)  # noqa: E731
        same = (
            (entries.kind == one.kind[0])
            & (entries.kernel == one.kernel[0])
            & (entries.stride == one.stride[0])
            & (depthwise(entries) == depthwise(one)[0])
            & ((entries.act_bits < 32) == (one.act_bits[0] < 32))
            & (entries.batch == one.batch[0])
        )
        for candidates in (same, entries.kind == one.kind[0], np.ones_like(same)):
            if candidates.any():
                index = np.flatnonzero(candidates)
                best = index[np.argmin(np.abs(np.log(entry_macs[index] / macs)))]
                return float(self._entry_ms[best] * macs / entry_macs[best])
        raise PredictorError("the lookup table is empty")

    def _sum(self, configs: LayerConfigs) -> np.ndarray:
        unique, inverse = configs.alone().unique()  # its entries are of layers alone
        return self._lookup(unique)[inverse].reshape(configs.shape).sum(axis=1)

    def _predict(self, graph, configs) -> np.ndarray:
        self.misses = 0
        overhead = self.overheads.get(model_label(graph))
        if overhead is None:  # an unseen model: the typical overhead
            overhead = float(np.median(list(self.overheads.values()))) if self.overheads else 0.0
        return self._sum(configs) + overhead

    def _state(self):
        return {
            "columns": list(_KEY),
            "entries": [[*key, ms] for key, ms in self.table.items()],
            "overheads": self.overheads,
        }

    def _load_state(self, state):
        if state["columns"] != list(_KEY):
            raise PredictorError("the lookup table's columns differ from this compplan's")
        self.table = {tuple(int(v) for v in row[:-1]): float(row[-1]) for row in state["entries"]}
        self.overheads = dict(state["overheads"])
        self._index()
