"""One member of the latency network's ensemble (`models.LatencyNetwork`): a layer MLP, an
optional activation-quantizer head and a per-model overhead, in torch. Its parts are summed per
plan by the caller's configuration index, so a member is additive as the predictor is. Its input
is `FEATURE_NAMES`, then any neighbour features (`RUNTIME_FEATURE_NAMES`) after them."""

from __future__ import annotations

from predictors.latency.features import FEATURE_NAMES

__all__ = ["NetworkMember"]

_ACT_QUANTIZED = FEATURE_NAMES.index("act_quantized")
_ACT_BITS = FEATURE_NAMES.index("act_bits")
# What the quantizer head reads: the input's element count and the bits.
_QUANTIZER_FEATURES = [FEATURE_NAMES.index("log2_in_elems"), _ACT_BITS]


class NetworkMember:
    """One member of the network's ensemble: the layer MLP, the quantizer head and the
    per-model overhead (built lazily, since predicting alone never imports torch's nn)."""

    def __init__(self, hidden: int, quantizer_by_elements: bool, n_features: int):
        from torch import nn

        self.net = nn.Sequential(
            nn.Linear(n_features, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 2),  # log time alone, log glue inside a model
        )
        # `quantizer_by_elements`: the activation quantizer in front of a layer is elementwise
        # work over the layer's input, priced by a head of its own from the input's element
        # count and the bits alone (its time alone, its glue inside a model), so that its cost
        # carries to layers and architectures the records never quantized; the layer MLP then
        # sees every layer as if unquantized. Otherwise the layer MLP prices the quantizer with
        # the layer, which fits a profiled model closer.
        self.quantizer = None
        if quantizer_by_elements:
            self.quantizer = nn.Sequential(
                nn.Linear(len(_QUANTIZER_FEATURES), 16), nn.SiLU(), nn.Linear(16, 2)
            )
        self.overhead = nn.Linear(1, 1)  # log overhead from log2 input elements

    def modules(self):
        parts = {"net": self.net, "quantizer": self.quantizer, "overhead": self.overhead}
        return {name: module for name, module in parts.items() if module is not None}

    def parameters(self):
        return [p for m in self.modules().values() for p in m.parameters()]

    def parts(self, x, mean, std):
        """(time alone, glue inside a model) in the predictor's unit, per row of features: the
        layer's, plus its activation quantizer's where it has one."""
        if self.quantizer is None:
            parts = self.net((x - mean) / std).double().exp()
            return parts[:, 0], parts[:, 1]
        unquantized = x.clone()
        unquantized[:, _ACT_QUANTIZED], unquantized[:, _ACT_BITS] = 0.0, 1.0
        layer = self.net((unquantized - mean) / std).double().exp()
        z = (x - mean) / std
        quantizer = self.quantizer(z[:, _QUANTIZER_FEATURES]).double().exp()
        parts = layer + quantizer * x[:, _ACT_QUANTIZED : _ACT_QUANTIZED + 1].double()
        return parts[:, 0], parts[:, 1]

    def model(self, x, inverse, input_z, mean, std):
        """Each plan's time: its configurations' parts summed, plus the overhead."""
        alone, glue = self.parts(x, mean, std)
        return (alone + glue)[inverse].sum(dim=1) + self.overhead(input_z).exp().reshape(())
