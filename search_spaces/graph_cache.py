"""Discovered graphs kept on disk, so that a model is traced once, not once per command.

`discover` asks here first. A graph is stored under a key that covers everything discovery reads
besides the weights' values: the model's structure (`repr`, every parameter's and buffer's name,
shape and dtype, which parameters are shared), the source code of every module class it is made
of (a changed `forward` is another model), the example inputs' shapes and dtypes, and the source
of discovery itself and the torch version. Where any of that cannot be read (a class defined
in an interactive session has no source), nothing is cached: the graph is discovered afresh.

Files live in `$COMPPLAN_CACHE_DIR/graphs/` (else the user cache directory), one JSON file per key,
written atomically; a file that does not parse is ignored and rewritten. `COMPPLAN_NO_GRAPH_CACHE=1`
turns the cache off.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import platformdirs
import torch
from torch import nn

from search_spaces.graph import CouplingGroup, InputTie, KeptModule, LayerSpec, ModelGraph

__all__ = ["cache_key", "load_graph", "save_graph"]

log = logging.getLogger("compplan")

# Bump when the stored layout changes.
_LAYOUT = 1


def _cache_dir() -> Path | None:
    if os.environ.get("COMPPLAN_NO_GRAPH_CACHE"):
        return None
    root = os.environ.get("COMPPLAN_CACHE_DIR") or platformdirs.user_cache_dir("compplan")
    return Path(root).expanduser() / "graphs"


@functools.cache
def _discovery_source() -> str:
    # Read as files, not imported: discover imports this module.
    here = Path(__file__).parent
    names = ("discover.py", "attention.py", "graph.py")
    return "".join((here / name).read_text() for name in names)


def cache_key(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> str | None:
    """The key of `model`'s graph on `inputs`, or None where it cannot be made safely."""
    try:
        classes = sorted({type(m) for m in model.modules()}, key=lambda c: c.__qualname__)
        sources = [inspect.getsource(c) for c in classes]
        ids: dict[int, str] = {}
        tensors = []
        for name, value in [
            *model.named_parameters(remove_duplicate=False),
            *model.named_buffers(remove_duplicate=False),
        ]:
            first = ids.setdefault(id(value), name)
            tensors.append((name, list(value.shape), str(value.dtype), first))
        facts = {
            "layout": _LAYOUT,
            "torch": torch.__version__,
            "discovery": hashlib.sha256(_discovery_source().encode()).hexdigest(),
            "repr": repr(model),
            "classes": [f"{c.__module__}.{c.__qualname__}" for c in classes],
            "sources": sources,
            "tensors": tensors,
            "inputs": [[list(x.shape), str(x.dtype)] for x in inputs],
            "training": model.training,
        }
    except (OSError, TypeError):  # no source for a class (defined interactively, or built-in)
        return None
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]


def load_graph(key: str | None, model_name: str) -> ModelGraph | None:
    """The graph stored under `key`, named `model_name`; None when there is none."""
    directory = _cache_dir()
    if key is None or directory is None:
        return None
    try:
        data = json.loads((directory / f"{key}.json").read_text())
        return _graph_of(data, model_name)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.info("ignoring the cached graph %s: %s", key, error)
        return None


def save_graph(key: str | None, graph: ModelGraph) -> None:
    """Store `graph` under `key` (nothing when the key or the cache is off; a cache that cannot
    be written is not an error: the next command discovers the model again)."""
    directory = _cache_dir()
    if key is None or directory is None:
        return
    data = {
        "layers": [asdict(spec) for spec in graph.layers.values()],
        "kept": [asdict(module) for module in graph.kept],
        "groups": [asdict(group) for group in graph.groups],
        "total_params": graph.total_params,
        "trace_error": graph.trace_error,
    }
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{key}.", suffix=".tmp")
        with os.fdopen(fd, "w") as file:
            json.dump(data, file)
        os.chmod(temporary, 0o644)
        os.replace(temporary, directory / f"{key}.json")
    except OSError as error:
        log.info("could not cache the graph: %s", error)
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(temporary)


def _graph_of(data: dict, model_name: str) -> ModelGraph:
    def spec(fields: dict) -> LayerSpec:
        tuples = ("weight_shape", "input_shape", "output_shape", "tied")
        fields = {k: tuple(v) if k in tuples else v for k, v in fields.items()}
        fields["inputs"] = tuple(InputTie(**tie) for tie in fields["inputs"])
        return LayerSpec(**fields)

    layers = {s.name: s for s in map(spec, data["layers"])}
    groups = tuple(
        CouplingGroup(**{**g, "layers": tuple(g["layers"]), "consumers": tuple(g["consumers"])})
        for g in data["groups"]
    )
    return ModelGraph(
        model_name=model_name,
        layers=layers,
        kept=tuple(KeptModule(**module) for module in data["kept"]),
        groups=groups,
        total_params=data["total_params"],
        trace_error=data["trace_error"],
    )
