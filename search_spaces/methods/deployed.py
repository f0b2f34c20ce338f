"""A dense layer as the deployed form runs it: behind its activation quantizer's deployed form.

The one place that builds it, for the engine's deployed models, the deployed structure that
latency is profiled on, and the single layers the latency model is taught with.
"""

from __future__ import annotations

from torch import nn

from search_spaces.methods._base import ActivationConfig
from search_spaces.methods._registry import activation_method_of

__all__ = ["deployed_layer"]


def deployed_layer(
    layer: nn.Module, config: ActivationConfig | None, quantizer: nn.Module | None = None
) -> nn.Module:
    """`layer` behind the deployed form of its input quantizer, or `layer` itself (config None).

    Args:
        layer: an ordinary Conv1d, Conv2d or Linear.
        config: the layer's activation config.
        quantizer: the calibrated quantizer; None builds the unit's skeleton (the structure and
            cost without the values, for timing).
    """
    if config is None:
        return layer
    unit = activation_method_of(config)
    device = next(layer.parameters()).device
    module = quantizer if quantizer is not None else unit.skeleton(config).to(device)
    return nn.Sequential(unit.deployed(module), layer)
