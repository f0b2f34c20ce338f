"""Latency predictors: a FLOPs baseline, a lookup table, and a latency predictor network.

All three share one interface:
- `fit(records)`: learn from latency records (`profile`'s DataFrame);
- `predict(graph, plans)`: milliseconds for a batch of plans of one model (`Plan`s or a
  `LatencyBatch`), as a numpy array;
- `save(path)` / `load_predictor(path)`: a JSON file (weights as lists of numbers), so that a saved
  predictor outlives library upgrades, unlike a pickled regressor.

Predictions work per distinct layer configuration (`LayerConfigs.unique`) and sum per plan, so a
batch of ten thousand plans costs a few thousand layer evaluations.

The network follows W-Gates' latency-predicting network and nn-Meter's kernel view: an MLP maps each
layer's features to its time alone and to its "glue" (what the layer adds inside a model: the
activation, the residual add, memory traffic); the per-layer times are summed and a per-model
overhead (a function of the input size) is added. It learns from whole models and, where the
records have them, from single layers — including random layers of kinds no profiled model has,
which is what lets it price an unseen architecture.

There is no learned map from a layer's time alone to its time inside a model: it is learned only
from the profiled models' layers and extrapolated badly to other kinds (fit on ResNet-18 and
digits, it priced MobileNetV2 1.8× too slow; without it, 15% MAPE). What lies outside the layers
(activations, residual adds, pooling, dispatch) is 30–36% of ResNet-18's, MobileNetV2's and
digits' time, and the glue learns it from the models' records; how it moves with a plan differs
between architectures, which is why the network carries poorly to one it never saw.

The records → training-set steps all three share live in `predictors.latency.training_sets`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from predictors.latency.features import (
    FEATURE_NAMES,
    LatencyBatch,
    LayerConfigs,
    features,
    plan_layer_configs,
)
from predictors.latency.network_member import NetworkMember
from predictors.latency.training_sets import (
    ModelRecords,
    PredictorError,
    input_elements,
    layer_records,
    measured_references,
    model_label,
    record_graphs,
    records_fingerprint,
    target_column,
    unit_ms_of,
)
from search_spaces.graph import ModelGraph
from search_spaces.output_file import write_text_atomically
from search_spaces.plan import Plan

__all__ = [
    "PREDICTOR_KINDS",
    "FlopsPredictor",
    "LatencyNetwork",
    "LatencyPredictor",
    "LookupTablePredictor",
    "PredictorError",
    "load_predictor",
    "make_predictor",
    "record_graphs",
]

FORMAT = "compplan-latency-predictor"
VERSION = 3  # 2: no in-model correction in the network; 3: an ensemble, the quantizer head
READS = (2, 3)  # a version-2 network is an ensemble of one member

Plans = Sequence[Plan] | LatencyBatch

logger = logging.getLogger("compplan")
_warned_extrapolated: set[str] = set()  # once a process: a search loads its predictor twice


# -- the interface ------------------------------------------------------------------------------


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
        return self._predict(graph, plan_layer_configs(graph, plans)) / self._base_of(graph)

    def reference_ms(self, graph: ModelGraph) -> tuple[float, str]:
        """The uncompressed model's latency that ratios are times of, and where it comes
        from: "measured" (with the records, for a model they hold) or "predicted"."""
        label = model_label(graph)
        if label in self.references:
            return self.references[label], "measured"
        return self._base_of(graph) * self.unit_ms, "predicted"

    def _base_of(self, graph: ModelGraph) -> float:
        """The raw prediction of `graph`'s uncompressed plan (every layer as it is). The first
        time in a process for a model the records hold no plan of, warns that its ratios are
        extrapolated."""
        label = model_label(graph)
        key = (label, graph.fingerprint)
        if key not in self._uncompressed:
            if label not in self.references and label not in _warned_extrapolated:
                _warned_extrapolated.add(label)
                logger.warning(
                    "the latency predictor's records hold no plan of %s, so its latency is "
                    "extrapolated from other models, which holds only where they share its block "
                    "kinds (README, Latency); measure its uncompressed plan (compplan preset "
                    "--preset keep:1, then compplan profile --plan it --no-structured "
                    "--no-layers) and fit again (a network with --for-other-models)",
                    label,
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


_KEY = tuple(LayerConfigs.__dataclass_fields__)


class LookupTablePredictor(LatencyPredictor):
    """The sum of each layer's latency measured alone (NetAdapt, nn-Meter), plus a per-model
    constant for everything between layers (the median residual on the model records).

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
        unique, inverse = configs.unique()
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


class LatencyNetwork(LatencyPredictor):
    """The latency predictor network: per-layer MLP outputs summed, plus a per-model overhead;
    an ensemble of `members` such networks from consecutive seeds, whose predictions are
    averaged.

    Args:
        hidden: width of the two hidden layers.
        steps: full-batch Adam steps.
        lr: Adam's learning rate (cosine-annealed).
        layer_weight: weight of the single-layer loss against the whole-model loss.
        seed: torch seed for the initial weights (of the first member; the others take the
            seeds after it).
        members: networks in the ensemble. Why several: on an architecture the records do not
            hold, one network's prediction moves with its initial weights (transfer to
            MobileNetV2 within ±10%: 66–88% over three seeds); their mean moves less. The mean
            of additive predictors is additive.
        quantizer_by_elements: price each activation quantizer by a head of its own, from its
            input's element count and bits alone (`compplan fit-latency --for-other-models`),
            for a model of which the records hold only the uncompressed plan: fit on ResNet-18,
            digits and that one MobileNetV2 record, it put 84.5% and 88% of MobileNetV2's plans
            within ±10% (two record sets of the bench), against 79% and 86% without the option.
            With no record of the model at all: 33% and 53% with it, 72% and 26% without, on
            the same two record sets; with records of three zoo families added (efficientnet_tiny
            shares MobileNetV2's MBConv blocks), 79% with it and 93% without
            (`scripts/bench_latency.py`). It fits the profiled models less closely.

    Both losses are squared errors of log latency, so the fit is for relative error, as the ±10%
    measure is.
    """

    kind = "network"
    additive = True  # per-configuration MLP outputs summed, plus a per-model overhead; averaged

    def __init__(
        self,
        *,
        hidden: int = 64,
        steps: int = 3000,
        lr: float = 3e-3,
        layer_weight: float = 1.0,
        seed: int = 0,
        members: int = 3,
        quantizer_by_elements: bool = False,
    ):
        super().__init__()
        if members < 1:
            raise PredictorError(f"the network needs at least 1 member (got {members})")
        self.config = {
            "hidden": hidden,
            "steps": steps,
            "lr": lr,
            "layer_weight": layer_weight,
            "seed": seed,
            "members": members,
            "quantizer_by_elements": quantizer_by_elements,
        }
        self.training_log: list[dict[str, float]] = []

    def _build(self):
        import torch

        self.members = []
        for index in range(self.config.get("members", 1)):
            torch.manual_seed(self.config["seed"] + index)
            by_elements = self.config.get("quantizer_by_elements", False)
            self.members.append(NetworkMember(self.config["hidden"], by_elements))
        self.mean = torch.zeros(len(FEATURE_NAMES))
        self.std = torch.ones(len(FEATURE_NAMES))

    @staticmethod
    def _input_z(graph: ModelGraph):
        import torch

        return torch.tensor([[math.log2(input_elements(graph)) / 20.0]])

    def _fit(self, records, graphs) -> None:
        import torch

        self._build()
        models = ModelRecords(records, graphs, self.unit)
        layers, layer_ms = layer_records(records, self.unit)
        if len(models) < 2:
            raise PredictorError("the network needs at least 2 model records")
        sets = []
        pieces = []
        for _, graph, configs, y in models.sets:
            unique, inverse = configs.unique()
            x = torch.from_numpy(features(unique))
            inverse = torch.from_numpy(inverse).reshape(configs.shape)
            sets.append((x, inverse, self._input_z(graph), torch.tensor(y).log()))
            pieces.append(x)
        x_layers = torch.from_numpy(features(layers)) if len(layer_ms) else None
        if x_layers is not None:
            pieces.append(x_layers)
            y_layers = torch.tensor(layer_ms, dtype=torch.float64).log()
        everything = torch.cat(pieces)
        self.mean = everything.mean(0)
        # A floor on the scale: a feature (nearly) constant in training, such as "depthwise" for
        # a model without depthwise convs, must not become a huge input on an unseen model.
        self.std = everything.std(0).clamp(min=0.25)
        # The members share no parameter, so the sum of their losses trains each on its own.
        parameters = [p for member in self.members for p in member.parameters()]
        optimizer = torch.optim.Adam(parameters, lr=self.config["lr"])
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.config["steps"])
        mean, std = self.mean, self.std
        for step in range(self.config["steps"]):
            optimizer.zero_grad()
            losses = []
            for member in self.members:
                loss = torch.stack(
                    [
                        (member.model(x, inverse, z, mean, std).log() - y).square().mean()
                        for x, inverse, z, y in sets
                    ]
                ).mean()
                if x_layers is not None:
                    layer_loss = (member.parts(x_layers, mean, std)[0].log() - y_layers).square()
                    loss = loss + self.config["layer_weight"] * layer_loss.mean()
                losses.append(loss)
            loss = torch.stack(losses).sum()
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 500 == 0 or step == self.config["steps"] - 1:
                mean_loss = float(loss.detach()) / len(self.members)
                self.training_log.append({"step": step, "loss": mean_loss})

    def _predict(self, graph, configs) -> np.ndarray:
        import torch

        unique, inverse = configs.unique()
        with torch.no_grad():
            x = torch.from_numpy(features(unique))
            inverse = torch.from_numpy(inverse).reshape(configs.shape)
            z = self._input_z(graph)
            ms = [m.model(x, inverse, z, self.mean, self.std) for m in self.members]
        return torch.stack(ms).mean(0).numpy()

    def _state(self):
        tensors = {
            f"members.{i}.{name}.{k}": v
            for i, member in enumerate(self.members)
            for name, module in member.modules().items()
            for k, v in module.state_dict().items()
        }
        tensors |= {"mean": self.mean, "std": self.std}
        return {
            "config": self.config,
            "features": list(FEATURE_NAMES),
            "tensors": {
                k: {"shape": list(v.shape), "data": v.reshape(-1).tolist()}
                for k, v in tensors.items()
            },
            "training_log": self.training_log,
        }

    def _load_state(self, state):
        import torch

        if state["features"] != list(FEATURE_NAMES):
            raise PredictorError(
                "this network was trained on other layer features than this compplan computes; "
                "fit it again with `compplan fit-latency`"
            )
        self.config = dict(state["config"])
        self.training_log = list(state.get("training_log", []))
        tensors = {
            k: torch.tensor(v["data"], dtype=torch.float32).reshape(v["shape"])
            for k, v in state["tensors"].items()
        }
        if not any(k.startswith("members.") for k in tensors):  # version 2: one network
            self.config["members"] = 1
            tensors = {(f"members.0.{k}" if "." in k else k): v for k, v in tensors.items()}
        self._build()
        for i, member in enumerate(self.members):
            for name, module in member.modules().items():
                prefix = f"members.{i}.{name}."
                module.load_state_dict(
                    {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
                )
        self.mean, self.std = tensors["mean"], tensors["std"]


PREDICTOR_KINDS = {cls.kind: cls for cls in (FlopsPredictor, LookupTablePredictor, LatencyNetwork)}


def make_predictor(kind: str, **options) -> LatencyPredictor:
    """A new, unfit predictor of `kind` ("flops", "lookup" or "network")."""
    try:
        return PREDICTOR_KINDS[kind](**options)
    except KeyError:
        raise PredictorError(
            f"unknown predictor kind '{kind}'; choose one of {', '.join(PREDICTOR_KINDS)}"
        ) from None


def load_predictor(path: str | Path) -> LatencyPredictor:
    """Read a predictor saved with `save`.

    Raises:
        PredictorError: the file is missing, not a compplan predictor, or from a newer version.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise PredictorError(
            f"{path}: no such predictor file (make one with `compplan fit-latency`)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PredictorError(f"{path}: not a latency predictor file ({error})") from None
    return predictor_from_document(document, source=str(path))


def predictor_from_document(document: object, *, source: str = "predictor") -> LatencyPredictor:
    """The predictor a `LatencyPredictor.to_document()` document describes.

    Raises:
        PredictorError: not a compplan predictor, from a newer version, or damaged; the message
            starts with `source`.
    """
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise PredictorError(f"{source}: not a compplan latency predictor file")
    if document.get("version") not in READS:
        raise PredictorError(
            f"{source}: predictor file version {document.get('version')} is not supported "
            f"(this compplan reads versions {', '.join(map(str, READS))})"
        )
    kind = document.get("kind")
    if kind not in PREDICTOR_KINDS:
        raise PredictorError(f"{source}: unknown predictor kind {kind!r}")
    predictor = PREDICTOR_KINDS[kind]()
    try:
        predictor._load_state(document["state"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        if isinstance(error, PredictorError):
            raise
        raise PredictorError(f"{source}: the saved {kind} predictor is damaged ({error})") from None
    predictor.fingerprint = dict(document.get("fingerprint", {}))
    references = document.get("references", {})  # older files have none
    if not isinstance(references, dict) or not all(
        isinstance(v, int | float) and v > 0 for v in references.values()
    ):
        raise PredictorError(f"{source}: its reference latencies are damaged")
    predictor.references = {str(k): float(v) for k, v in references.items()}
    unit, unit_ms = document.get("unit", "latency_ms"), document.get("unit_ms", 1.0)
    if unit not in ("units", "latency_ms") or not isinstance(unit_ms, int | float) or unit_ms <= 0:
        raise PredictorError(f"{source}: its unit is damaged")
    predictor.unit, predictor.unit_ms = unit, float(unit_ms)
    predictor.fitted = True
    return predictor
