"""The runtimes a deployed plan is timed and priced on (light: the command line's parser reads it).

- "onnxruntime": the plan's ONNX file run by ONNX Runtime on the CPU, int8 kernels where layers
  have 8-bit activations (the default: what users deploy with);
- "torch": PyTorch eager, weights decoded (for users who deploy PyTorch).
"""

__all__ = ["DEFAULT_RUNTIME", "RUNTIMES"]

RUNTIMES = ("onnxruntime", "torch")
DEFAULT_RUNTIME = RUNTIMES[0]
