"""`LatencyNetwork`: the latency predictor network.

It follows W-Gates' latency-predicting network and nn-Meter's kernel view: an MLP maps each
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
between architectures, which is why the network carries poorly to one whose block kinds the
records lack.
"""

from __future__ import annotations

import math

import numpy as np

from predictors.latency.features import FEATURE_NAMES, RUNTIME_FEATURE_NAMES, features
from predictors.latency.network_member import NetworkMember
from predictors.latency.predictor import LatencyPredictor
from predictors.latency.training_sets import (
    ModelRecords,
    PredictorError,
    input_elements,
    layer_records,
)
from search_spaces.graph import ModelGraph

__all__ = ["LatencyNetwork"]


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
            digits and that one MobileNetV2 record, it put 84.5%, 88% and 81% of MobileNetV2's
            plans within ±10% (three record sets of the bench), against 79%, 86% and 62%
            without the option. With no record of the model at all: 33%, 53% and 22% with it,
            72%, 26% and 24% without; with records of three zoo families added
            (efficientnet_tiny shares MobileNetV2's MBConv blocks), 79% and 91% with it, 93% and
            95% without (two record sets)
            (`scripts/bench_latency.py`). It fits the profiled models less closely.

    Both losses are squared errors of log latency, so the fit is for relative error, as the ±10%
    measure is.
    """

    kind = "network"
    # Per-configuration MLP outputs summed, plus a per-model overhead; averaged. Fit on records
    # of a runtime with int8 kernels, a layer's features hold its neighbours' kernel classes
    # (`RUNTIME_FEATURE_NAMES`), and the network is additive no longer (set on the instance).
    additive = True
    INT8_RUNTIMES = ("onnxruntime",)

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
        self.feature_names: tuple[str, ...] = FEATURE_NAMES

    def _build(self):
        import torch

        self.members = []
        for index in range(self.config.get("members", 1)):
            torch.manual_seed(self.config["seed"] + index)
            by_elements = self.config.get("quantizer_by_elements", False)
            n_features = len(self.feature_names)
            self.members.append(NetworkMember(self.config["hidden"], by_elements, n_features))
        self.mean = torch.zeros(len(self.feature_names))
        self.std = torch.ones(len(self.feature_names))
        self.additive = not set(self.feature_names) & set(RUNTIME_FEATURE_NAMES)

    @staticmethod
    def _input_z(graph: ModelGraph):
        import torch

        return torch.tensor([[math.log2(input_elements(graph)) / 20.0]])

    def _distinct(self, configs):
        """`configs.unique()`, of the columns its features read: without neighbour features a
        layer's neighbours make no configuration of their own."""
        reads_neighbours = set(self.feature_names) & set(RUNTIME_FEATURE_NAMES)
        return (configs if reads_neighbours else configs.alone()).unique()

    def _fit(self, records, graphs) -> None:
        import torch

        self.feature_names = FEATURE_NAMES + (
            RUNTIME_FEATURE_NAMES if self.runtime in self.INT8_RUNTIMES else ()
        )
        self._build()
        models = ModelRecords(records, graphs, self.unit)
        layers, layer_ms = layer_records(records, self.unit)
        if len(models) < 2:
            raise PredictorError("the network needs at least 2 model records")
        sets = []
        pieces = []
        for _, graph, configs, y in models.sets:
            unique, inverse = self._distinct(configs)
            x = torch.from_numpy(features(unique, self.feature_names))
            inverse = torch.from_numpy(inverse).reshape(configs.shape)
            sets.append((x, inverse, self._input_z(graph), torch.tensor(y).log()))
            pieces.append(x)
        x_layers = torch.from_numpy(features(layers, self.feature_names)) if len(layer_ms) else None
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

        unique, inverse = self._distinct(configs)
        with torch.no_grad():
            x = torch.from_numpy(features(unique, self.feature_names))
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
            "features": list(self.feature_names),
            "tensors": {
                k: {"shape": list(v.shape), "data": v.reshape(-1).tolist()}
                for k, v in tensors.items()
            },
            "training_log": self.training_log,
        }

    def _load_state(self, state):
        import torch

        names = tuple(state["features"])
        if names not in (FEATURE_NAMES, FEATURE_NAMES + RUNTIME_FEATURE_NAMES):
            raise PredictorError(
                "this network was trained on other layer features than this compplan computes; "
                "fit it again with `compplan fit-latency`"
            )
        self.feature_names = names
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
