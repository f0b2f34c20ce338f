"""What a measuring process times on its runtime (`predictors.latency.profiling`): the module
itself on torch; on ONNX Runtime a fresh session on its exported file, with the kernel class
each planned layer ran as.

This reaches into `engine` as profiling does (the exported form is the engine's to write), in
the measuring processes only: the imports are local to `RuntimeForms.__call__`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ProfileError", "RuntimeForms", "kernels_text"]


class ProfileError(RuntimeError):
    """Profiling could not run or a measuring process failed; the message says why
    (`predictors.latency.profiling` raises it; defined here, below it, so both can)."""


def kernels_text(kernels: dict[str, str] | None) -> str:
    """A record's `kernels` column: each planned layer's kernel class as JSON ("" on torch;
    a single layer's under "layer")."""
    if kernels is None:
        return ""
    if len(kernels) == 1 and next(iter(kernels)) in ("", "0"):  # a single layer, the root
        kernels = {"layer": next(iter(kernels.values()))}
    return json.dumps(kernels, sort_keys=True)


class RuntimeForms:
    """What a measuring process times on its runtime: on "torch" the module itself; on
    "onnxruntime" a fresh session on the module's ONNX file (`engine.onnx_export.
    export_structure`: int8 where the structure has u8 quantizers in front of layers), exported
    the first time its key is asked for and opened afresh each round, as the module is built."""

    def __init__(self, runtime: str, threads: int):
        self.runtime, self.threads = runtime, threads
        self.files: dict[str, Path] = {}
        self.kernels: dict[str, dict[str, str]] = {}  # key → each planned layer's kernel class
        self.scratch = tempfile.TemporaryDirectory(prefix="compplan-profile-")

    def __call__(self, key: str, build: Callable[[], Any], inputs: tuple) -> Any:
        if self.runtime == "torch":
            return build()
        from engine.onnx_export import export_structure
        from engine.onnx_session import onnx_session

        if key not in self.files:
            path = Path(self.scratch.name) / f"{key}.onnx"
            try:
                report = export_structure(build(), inputs, path)
            except Exception as error:  # the exporter's and the runtime's errors are many kinds
                raise ProfileError(f"{key}: cannot export it to ONNX ({error})") from None
            self.files[key] = path
            self.kernels[key] = {
                name.removeprefix("0."): layer["kernel"] for name, layer in report.layers.items()
            }
        return onnx_session(self.files[key], threads=self.threads, count_kernels=False).module()

    def close(self) -> None:
        self.scratch.cleanup()
