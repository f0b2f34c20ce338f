"""`StudyIdentity`: everything that decides a study's trials, as digests, so that a study is
resumed only by the same problem.

A trial stores parameters (a position on a layer's frontier, a keep ratio) and the figures they
scored. Read against another model, other data or other budgets, the same parameters mean another
plan: a retrained model resumed under the same study name once yielded a plan over its budget
with the old trial's figures printed beside it. So a study records its identity when created
(the Optuna study's "compplan_identity" user attribute; a Ray experiment's marker file), and a
search or a worker whose identity differs is refused before it runs a trial.

The components, each a short digest (a changed one is named in the refusal):

- "structure": the compressible layers' names, kinds, shapes and groups (`ModelGraph.fingerprint`);
- "weights": every parameter and buffer of the model, by content;
- "inputs": the example inputs' shapes and dtypes;
- "task": the task spec's kind and its file's content (a data file, a task's .py file), so the
  same data reached by another path (a worker's copy) is the same task;
- "knobs": the knob restrictions, per-layer overrides and protect_ends;
- "budgets": size, latency and MACs budgets;
- "objectives": what the study minimizes (the proxy alone, or with size and latency: --pareto);
- "latency": the latency predictor (its device fingerprint and fitted state), if any.

The runtime (`SearchConfig.runtime`) needs no component of its own: a latency predictor is fit
on records of one runtime and refused for another, so its "latency" digest covers it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from planner.config import SearchConfig
from search_spaces.graph import ModelGraph

__all__ = ["IDENTITY_ATTR", "StudyIdentity"]

# The Optuna study's user attribute holding its identity's components.
IDENTITY_ATTR = "compplan_identity"

# What each component is called in a refusal ("was made for other model weights").
_NAMES = {
    "structure": "another model structure",
    "weights": "other model weights",
    "inputs": "other input shapes or dtypes",
    "task": "another task or task data",
    "knobs": "other knobs",
    "budgets": "other budgets",
    "objectives": "other objectives (--pareto)",
    "latency": "another latency predictor",
}
_DIGITS = 16


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")  # so that ("ab", "c") and ("a", "bc") differ
    return h.hexdigest()[:_DIGITS]


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _tensor_bytes(tensor: Tensor) -> bytes:
    """The tensor's raw bytes whatever its dtype (bfloat16 has no numpy form)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def weights_digest(model: nn.Module) -> str:
    """A digest of every parameter and buffer of `model` by name, dtype, shape and content."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not isinstance(tensor, Tensor):
            continue
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\0".encode())
        h.update(_tensor_bytes(tensor))
    return h.hexdigest()[:_DIGITS]


def task_digest(spec: str | None) -> str:
    """A digest of the task `spec` names: its kind and its file's content (data files, a task's
    .py file); a zoo task or a package's callable by its spec."""
    if not spec:
        return _digest("none")
    kind, _, rest = spec.partition(":")
    if kind in ("data", "inputs"):
        return _digest(kind, _file_bytes(rest))
    where, sep, attr = spec.rpartition(":")
    if sep and where.endswith(".py"):
        return _digest("file", attr, _file_bytes(where))
    return _digest("spec", spec)


def _file_bytes(path: str) -> bytes:
    """The file's content; a missing file digests as its path (resolving the task reports it)."""
    try:
        return Path(path).read_bytes()
    except OSError:
        return f"missing:{path}".encode()


def latency_digest(document: Mapping[str, Any] | None) -> str:
    """A digest of a latency predictor's document (kind, device fingerprint, fitted state)."""
    return _digest("none" if document is None else _json(dict(document)))


@dataclass(frozen=True)
class StudyIdentity:
    """The digests that decide a study's trials (see the module docstring).

    Attributes:
        components: component name → digest.
    """

    components: Mapping[str, str]

    @classmethod
    def of(
        cls,
        model: nn.Module,
        inputs: Sequence[Tensor],
        graph: ModelGraph,
        config: SearchConfig,
    ) -> StudyIdentity:
        """The identity of a search of `model` (with `inputs`, discovered as `graph`) under
        `config`."""
        shapes = [[list(t.shape), str(t.dtype)] for t in inputs]
        # The knobs' unversioned form: studies made before `SearchKnobs` keep their digest.
        knobs = [config.knobs.knobs_kwargs(), config.overrides, config.protect_ends]
        return cls(
            {
                "structure": _digest(graph.fingerprint),
                "weights": weights_digest(model),
                "inputs": _digest(_json(shapes)),
                "task": task_digest(config.task),
                "knobs": _digest(_json(knobs)),
                "budgets": _digest(_json(config.budget.to_dict())),
                "objectives": _digest(_json({"pareto": config.pareto})),
                "latency": latency_digest(config.latency),
            }
        )

    @property
    def digest(self) -> str:
        """One short digest of every component (`--fresh` names a new study with it)."""
        return _digest(_json(dict(self.components)))[:8]

    def to_dict(self) -> dict[str, str]:
        return dict(self.components)

    def changes(self, stored: Mapping[str, Any] | None) -> list[str]:
        """What differs from a `stored` identity, as words for a message ("other model
        weights", ...); [] when it is the same (or none was stored: an older compplan's study)."""
        if not isinstance(stored, Mapping):
            return []
        keys = [k for k in _NAMES if k in self.components or k in stored]
        return [_NAMES[k] for k in keys if stored.get(k) != self.components.get(k)]

    def refusal(self, study: str, where: str, changed: list[str], fresh: str | None) -> str:
        """The one-line refusal of a search to resume `study` (in `where`), made for `changed`,
        giving the two ways on (`fresh`: the name --fresh would use; None where --study named
        the study, so that a new name is the way)."""
        ways = "give another --study NAME"
        if fresh is not None:
            ways += f", or --fresh to start a new study under the default name ('{fresh}')"
        return (
            f"study '{study}' in {where} was made for {_join(changed)} than this search's"
            f"{_hint(changed)}, so its trials would mean other plans here; {ways}"
        )

    def worker_refusal(self, study: str, where: str, changed: list[str]) -> str:
        """The one-line refusal of a worker to join `study` (in `where`), made for `changed`."""
        return (
            f"study '{study}' in {where} was made for {_join(changed)} than this worker "
            f"rebuilt from its config{_hint(changed)}, so its trials would mean other plans "
            "here; run the worker "
            "where the study's model files and latency predictor are as they were, with the "
            "study's task data (--task, --data or --inputs naming a copy of it)"
        )


def _hint(changed: list[str]) -> str:
    """Why weights may differ with nothing retrained: a build that draws them at random."""
    if _NAMES["weights"] not in changed or _NAMES["structure"] in changed:
        return ""
    return " (retrained, or built with random weights, which differ at every build unless seeded)"


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]
