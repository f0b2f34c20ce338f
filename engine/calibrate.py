"""Re-estimate BatchNorm statistics after compression.

Quantizing or pruning a layer shifts the distribution of its outputs, and the BatchNorm after it
then normalises with statistics that belong to the original weights. On zoo:digits this alone
takes a PQ model at 20× from 99.6% to chance; recomputing the running statistics on a few hundred
calibration inputs (real or synthesized) brings it back to about 99% before any fine-tuning.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["reestimate_batchnorm_"]


@torch.no_grad()
def reestimate_batchnorm_(model: nn.Module, inputs: Tensor, *, batch_size: int = 64) -> int:
    """Recompute every BatchNorm's running mean and variance on `inputs`, in place.

    Only the BatchNorms run in training mode (dropout and the rest stay as they were); their
    statistics become the exact average over all batches (momentum None), then the momentum and
    every module's mode are restored.

    Returns:
        How many BatchNorm layers were re-estimated.
    """
    norms = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not norms or len(inputs) == 0:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in norms]
    try:
        model.eval()
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over the calibration batches
            norm.train()
        for batch in torch.split(inputs, batch_size):
            model(batch)
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        for module, mode in modes.items():
            module.train(mode)
    return len(norms)
