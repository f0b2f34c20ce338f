"""One loader for exported ONNX files: an ONNX Runtime session, its kernels checked.

`onnx_session(path)` opens a CPU `onnxruntime.InferenceSession` on the file as written, with
every graph optimization on (constant folding decodes the planned weights once, at load), and
reads back the optimized graph to count the kernels that will run: fp32 convolutions and matrix
products, int8 ones (QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger), 4-bit MatMulNBits,
and any DequantizeLinear left to run on every call. Where the file's metadata expects more int8
kernels than the runtime fused, a warning says so.

A plain session runs the file too, without compplan:

    import onnxruntime
    session = onnxruntime.InferenceSession("model.onnx")
    outputs = session.run(None, {session.get_inputs()[0].name: x})

`OnnxModule` wraps a session as an `nn.Module` (no parameters), so tasks score the file as they
score a model in memory.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from engine.export import ExportError, metadata_document

__all__ = ["KERNEL_CLASSES", "OnnxModule", "OnnxSession", "onnx_session", "read_onnx_metadata"]

_LOG = logging.getLogger("compplan")
# Optimized-graph operator types by the kernel class they run in.
KERNEL_CLASSES = {
    "fp32": ("Conv", "FusedConv", "Gemm", "MatMul", "FusedMatMul", "FusedGemm"),
    "int8": (
        "QLinearConv",
        "QLinearMatMul",
        "QGemm",
        "ConvInteger",
        "MatMulInteger",
        "DynamicQuantizeMatMul",
    ),
    "int4": ("MatMulNBits",),
    "dequantize": ("DequantizeLinear",),
}


@dataclass
class OnnxSession:
    """An open session on an exported file.

    Attributes:
        session: the `onnxruntime.InferenceSession`.
        metadata: the compplan metadata the file records ({} for another ONNX file).
        kernels: kernel class → count of operators in the optimized graph (`KERNEL_CLASSES`).
    """

    session: Any
    metadata: dict
    kernels: dict[str, int]

    def module(self) -> OnnxModule:
        return OnnxModule(self.session)


class OnnxModule(nn.Module):
    """An ONNX Runtime session as a module: inputs and outputs are CPU tensors. A file exported
    with a fixed batch is run one example at a time."""

    def __init__(self, session: Any):
        super().__init__()
        self.session = session
        self.inputs = [i.name for i in session.get_inputs()]
        first = session.get_inputs()[0].shape
        self.fixed_batch = first[0] if first and isinstance(first[0], int) else None

    def forward(self, *xs: Tensor) -> Tensor | tuple[Tensor, ...]:
        if self.fixed_batch is not None and len(xs[0]) != self.fixed_batch:
            rows = [self(*(x[i : i + 1] for x in xs)) for i in range(len(xs[0]))]
            if isinstance(rows[0], tuple):
                return tuple(torch.cat(parts) for parts in zip(*rows, strict=True))
            return torch.cat(rows)
        feeds = {name: x.detach().cpu().numpy() for name, x in zip(self.inputs, xs, strict=True)}
        outputs = [torch.from_numpy(np.asarray(o)) for o in self.session.run(None, feeds)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def read_onnx_metadata(path: str | Path) -> dict:
    """The compplan metadata an exported ONNX file records ({} if it records none).

    Raises:
        ExportError: not a readable ONNX file.
    """
    import onnx

    from search_spaces.input_file import InputFileError, check_input_file

    try:
        path = check_input_file(path, "model file")
        model = onnx.load(str(path), load_external_data=False)
    except InputFileError as error:
        raise ExportError(str(error)) from None
    except Exception as error:
        raise ExportError(f"{path} is not a readable ONNX file ({type(error).__name__})") from None
    raw = next((p.value for p in model.metadata_props if p.key == "compplan"), None)
    if raw is None:
        return {}
    return metadata_document(raw, path)


def onnx_session(
    path: str | Path, *, threads: int | None = None, count_kernels: bool = True
) -> OnnxSession:
    """An ONNX Runtime session on `path` with its kernels counted (module docstring).

    Args:
        path: an ONNX file (compplan's or any other).
        threads: intra-op threads (None: the runtime's default).
        count_kernels: save and read back the optimized graph to count its kernels and check
            them against the file's plan; False skips that load-time cost (`kernels` is {}),
            for a file opened again and again, as a timing's rounds do.

    Raises:
        ExportError: onnxruntime is not installed, or the file is not a valid ONNX model.
    """
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(
            "onnxruntime is not installed: pip install onnxruntime (or `make setup`)"
        ) from None
    metadata = read_onnx_metadata(path)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # the runtime's notes on saving an optimized graph
    if threads is not None:
        options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="compplan-onnx-") as scratch:
        optimized = Path(scratch) / "optimized.onnx"
        if count_kernels:
            options.optimized_model_filepath = str(optimized)
        try:
            session = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ExportError(f"onnxruntime cannot load {path}: {first}") from None
        kernels = _kernel_counts(optimized) if count_kernels else {}
    if count_kernels:
        _check_kernels(path, metadata, kernels)
    return OnnxSession(session=session, metadata=metadata, kernels=kernels)


def _kernel_counts(optimized: Path) -> dict[str, int]:
    import onnx

    ops = Counter(node.op_type for node in onnx.load(str(optimized)).graph.node)
    return {kind: sum(ops[op] for op in names) for kind, names in KERNEL_CLASSES.items()}


def _check_kernels(path: str | Path, metadata: dict, kernels: dict[str, int]) -> None:
    """Warn where the runtime runs fewer int8 kernels than the file's plan expects."""
    layers = metadata.get("layers") or {}
    expected = sorted(name for name, record in layers.items() if record.get("kernel") == "int8")
    if len(expected) > kernels["int8"]:
        missing = len(expected) - kernels["int8"]
        _LOG.warning(
            "%s: %d of the %d layers planned for int8 kernels run in fp32 here (%s)",
            path,
            missing,
            len(expected),
            ", ".join(expected[:5]) + (" ..." if len(expected) > 5 else ""),
        )
