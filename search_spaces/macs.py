"""`layer_macs`: the one formula for a layer's multiply-accumulates.

Discovery (`ModelGraph` layer facts), the latency features and the profiling records all count
MACs with it, so a record's MACs and a prediction's are the same number.
"""

from __future__ import annotations

__all__ = ["layer_macs"]


def layer_macs(*, c_out, c_in, groups, kernel, out_spatial, batch=1):
    """Multiply-accumulates of a conv or Linear: every output element reads C_in/groups·K² weights.

    The one formula for discovery, the latency features and profiling records. Works on ints and
    on numpy arrays alike (integer division: C_in is a multiple of groups).

    Args:
        c_out, c_in: output and input channels (features for Linear).
        groups: conv groups (c_out for a depthwise conv; 1 for Linear).
        kernel: kernel elements (K² for a 2-d conv, 1 for Linear).
        out_spatial: output elements per channel (H·W, L, or tokens for a Linear).
        batch: examples (1: per example).
    """
    return batch * out_spatial * c_out * (c_in // groups) * kernel
