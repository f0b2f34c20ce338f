"""`SearchConfig`: everything that defines a search, typed, validated and JSON round-tripping.

It is what a study stores (versioned, as its "compplan_config" user attribute), what
`compplan worker` reads back to rebuild the same planner (`Planner.from_study`), and what the
best plan's provenance records. The latency predictor travels inside it as its JSON document, so a
worker on another machine needs no predictor file.

    config = SearchConfig(model_spec="zoo:digits", budget=Budget(size_bytes=40_000))
    SearchConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config  # True

The one field a document does not round-trip is a password in the storage URL: documents hold
it masked (`planner.storage.display_url`), since studies, plans and summaries are shared, and a
worker is given the storage on its own command line anyway.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from engine.distill import DISTILL_LOSSES
from planner.budgets import BudgetError
from planner.errors import PlannerError
from planner.knob_restrictions import SearchKnobs
from planner.storage import DEFAULT_STORAGE, display_url
from predictors.runtimes import DEFAULT_RUNTIME, RUNTIMES
from search_spaces.model_spec import parse_shape
from search_spaces.plan import Budget, PlanError

__all__ = [
    "BACKENDS",
    "CONFIG_FORMAT",
    "CONFIG_VERSION",
    "OBJECTIVES",
    "SAMPLERS",
    "RaySettings",
    "RealSettings",
    "SearchConfig",
]

CONFIG_FORMAT = "compplan-search-config"
CONFIG_VERSION = 1
OBJECTIVES = ("proxy", "real")
SAMPLERS = ("tpe", "nsga2", "random")
BACKENDS = ("optuna", "ray")
DEFAULT_CANDIDATES = 5
# The caps of the balanced candidates refinement fine-tunes beside the proxy's best plans.
BALANCED_CAPS = (4.0, 2.0)


def _plain(fields_: Mapping[str, Any]) -> dict[str, Any]:
    """Knob fields as a plain dict, sequences as tuples."""
    return {
        key: tuple(value) if isinstance(value, list | tuple) else value
        for key, value in dict(fields_).items()
    }


def _choose(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise PlannerError(f"unknown {what} '{value}'; choose one of {', '.join(allowed)}")


@dataclass(frozen=True)
class RealSettings:
    """How the real objective scores a plan: apply, fine-tune `epochs`, score on validation data.

    Attributes:
        epochs: fine-tune epochs per plan (0: score right after applying).
        lr: the base fine-tune learning rate (None: `engine.finetune.default_lr` of the model,
            lower for transformers).
        distill: the distillation loss, "kl", "mse" or "cosine" (None: the task's, else chosen
            from the model's output, `engine.distill.infer_distill`).
        candidates: with the Optuna backend, how many of the proxy search's best plans are
            fine-tuned (None: 5). On Ray every trial is fine-tuned, so it must stay None.
        tune_lr: trials of the per-layer learning-rate search (P-Transfer) for the winner; 0 off.
        balanced: caps of the balanced candidates fine-tuned beside the proxy's best (see
            `planner.solver.ExactSolver.balanced`).
    """

    epochs: int = 2
    lr: float | None = None
    distill: str | None = None
    candidates: int | None = None
    tune_lr: int = 0
    balanced: tuple[float, ...] = BALANCED_CAPS

    def __post_init__(self) -> None:
        object.__setattr__(self, "balanced", tuple(float(c) for c in self.balanced))
        if self.epochs < 0 or self.tune_lr < 0:
            raise PlannerError("--epochs and --tune-lr must be at least 0")
        if self.candidates is not None and self.candidates < 1:
            raise PlannerError("--candidates must be at least 1")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise PlannerError(f"--lr must be a positive number, not {self.lr!r}")
        if self.distill is not None:
            _choose(self.distill, DISTILL_LOSSES, "distillation loss")
        if any(c < 1 for c in self.balanced):
            raise PlannerError("balanced caps are ratios of at least 1")

    @property
    def n_candidates(self) -> int:
        return DEFAULT_CANDIDATES if self.candidates is None else self.candidates


@dataclass(frozen=True)
class RaySettings:
    """Where and how trials run on Ray Tune.

    Attributes:
        address: "HOST:PORT" of a running cluster's head; None starts a local Ray.
        cpus_per_trial, gpus_per_trial: each trial's resources.
        results: the folder Tune keeps its experiments in.
        max_failures: how often a trial lost with its node (or crashed) is run again.
    """

    address: str | None = None
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    results: str = "compplan-ray"
    max_failures: int = 2

    def __post_init__(self) -> None:
        if not self.cpus_per_trial > 0 or self.gpus_per_trial < 0:
            raise PlannerError("cpus per trial must be above 0 and gpus per trial at least 0")
        if self.max_failures < 0:
            raise PlannerError("max_failures must be at least 0")


@dataclass(frozen=True)
class SearchConfig:
    """One search, completely (see the module docstring).

    Attributes:
        model_spec: the model's spec ("zoo:digits", "package.module:callable"); "" for a module
            handed over in Python (such a study cannot be joined by `compplan worker`).
        input_shape: the example input's shape, batch first, as sizes or "1,3,224,224" (None:
            the model's own).
        task: the task's spec (`engine.task_spec`: "zoo:digits", "data:PATH", "inputs:PATH",
            "file.py:callable"): its calibration inputs weigh the proxy's layers and the real
            objective fine-tunes and scores on it (None: the model's own zoo task, if any).
        budget: size (bytes), predicted latency (ms), MACs; None fields are unlimited.
        protect_ends: keep the first conv and the classifier at 32 bits.
        knobs: what the search may choose for every layer (`SearchKnobs`; a dict of its fields
            or of `search_spaces.Knobs` keywords is converted).
        overrides: layer name or "re:<pattern>" → `Knobs` fields for those layers.
        objective: "proxy" (predicted distortion) or "real" (fine-tuned and scored).
        real: the real objective's settings.
        sampler: "tpe", "nsga2" or "random".
        pareto: minimize (proxy, size[, latency]) together; the Pareto front is the answer.
        repair: move each proposal onto the size budget's edge, and prune it under the latency
            budget, before scoring it.
        seed_exact: seed the study with the exact solver's answer.
        backend: "optuna" (trials here, kept in `storage`) or "ray" (Ray Tune).
        ray: the Ray backend's settings.
        storage: an Optuna storage URL (`planner.storage.open_storage`).
        study: the study name; None derives one from model, objective and budgets.
        fresh: start a new study under the default name, with the digest of what decides its
            trials appended ("<default>-<8 hex>", `planner.identity.StudyIdentity.digest`),
            instead of resuming one made for another model, data or settings (which is refused);
            the earlier study is kept. The same fresh search run again resumes its own study.
        seed: the sampler's seed (also seeds k-means and fine-tuning in the real objective).
        latency: a latency predictor's JSON document (`LatencyPredictor.to_document()`).
        runtime: what runs the deployed plan and what its latency is priced on: "onnxruntime"
            or "torch" (`predictors.latency.records.RUNTIMES`); the predictor must have been fit
            on records of it. None: the predictor's runtime, or onnxruntime without one
            (`priced_runtime`).
        verify: after the search, measure its this many best feasible plans on the runtime and
            keep the best one measured within the latency budget (`planner.verify`); 0: off.
    """

    model_spec: str = ""
    input_shape: tuple[int, ...] | None = None
    task: str | None = None
    budget: Budget = field(default_factory=Budget)
    protect_ends: bool = True
    knobs: SearchKnobs = field(default_factory=SearchKnobs)
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    objective: str = "proxy"
    real: RealSettings = field(default_factory=RealSettings)
    sampler: str = "tpe"
    pareto: bool = False
    repair: bool = True
    seed_exact: bool = True
    backend: str = "optuna"
    ray: RaySettings = field(default_factory=RaySettings)
    storage: str = DEFAULT_STORAGE
    study: str | None = None
    fresh: bool = False
    seed: int = 0
    latency: Mapping[str, Any] | None = None
    runtime: str | None = None
    verify: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.knobs, SearchKnobs):  # a dict, as Python users and studies give it
            object.__setattr__(self, "knobs", SearchKnobs.from_dict(self.knobs or {}))
        # Plain dicts with tuples, as they read back from JSON, so that a config equals its
        # round trip (and mapping proxies can be written at all).
        object.__setattr__(
            self, "overrides", {key: _plain(value) for key, value in dict(self.overrides).items()}
        )
        if self.input_shape is not None:  # "1,3,224,224" or a sequence of sizes
            object.__setattr__(self, "input_shape", parse_shape(self.input_shape))
        _choose(self.objective, OBJECTIVES, "objective")
        _choose(self.sampler, SAMPLERS, "sampler")
        _choose(self.backend, BACKENDS, "backend")
        if self.real.tune_lr and self.objective != "real":
            raise PlannerError("--tune-lr needs --objective real (learning rates are scored by it)")
        if self.backend == "ray":
            # Each of these would be ignored on Ray: refuse rather than drop it silently.
            if self.pareto:
                raise PlannerError(
                    "--pareto is for --backend optuna (Ray Tune's OptunaSearch optimizes one "
                    "metric here)"
                )
            if self.real.tune_lr:
                raise PlannerError(
                    "--tune-lr is for --backend optuna: on Ray run the search, then tune the "
                    "winner's learning rates with --backend optuna"
                )
            if self.real.candidates is not None:
                raise PlannerError(
                    "--candidates is for --backend optuna: on Ray every trial is fine-tuned "
                    "(ASHA stops the poor ones)"
                )
        if self.fresh and self.study is not None:
            raise PlannerError(
                "--fresh starts a new study under the default name; with --study give a new "
                "NAME instead"
            )
        if self.runtime is not None:
            _choose(self.runtime, RUNTIMES, "runtime")
        if self.verify < 0:
            raise PlannerError(f"--verify must be at least 0, not {self.verify}")
        if self.verify and self.budget.latency_ms is None:
            raise BudgetError(
                "--verify measures the best plans against a latency budget: give "
                "--latency-budget (and --latency-model), or drop --verify"
            )
        if self.verify and self.objective == "real":
            raise PlannerError(
                "--verify checks the proxy search's plans: use it with --objective proxy, then "
                "apply the plan (`compplan apply --onnx` measures the file)"
            )
        timed_on = self._predictor_runtime
        if self.runtime is not None and timed_on is not None and timed_on != self.runtime:
            raise PlannerError(
                f"the latency predictor was fit on records timed on {timed_on}, not "
                f"{self.runtime}: profile and fit one with `--runtime {self.runtime}`, or pass "
                f"--runtime {timed_on}"
            )
        if self.budget.latency_ms is not None and self.latency is None:
            raise BudgetError(
                "a latency budget needs a latency predictor: build one with `compplan profile` "
                "and `compplan fit-latency`, then pass it (--latency-model PATH)"
            )

    @property
    def _predictor_runtime(self) -> str | None:
        if self.latency is None or "fingerprint" not in self.latency:
            return None
        return str(dict(self.latency["fingerprint"]).get("runtime", "torch"))

    @property
    def priced_runtime(self) -> str:
        """The runtime latency is priced on: `runtime`, else the predictor's, else the
        default (onnxruntime)."""
        return self.runtime or self._predictor_runtime or DEFAULT_RUNTIME

    @property
    def sampler_name(self) -> str:
        """The sampler that runs: a Pareto search needs a multi-objective one (NSGA-II)."""
        return "nsga2" if self.pareto and self.sampler == "tpe" else self.sampler

    def study_name(self, model_name: str = "model", *, identity: str | None = None) -> str:
        """The study's name: `study`, or one derived from the model, the objective and the
        budgets, so that searches whose trials differ never share a study or a Tune experiment.
        The name says the objective the user asked for: a real search's report and plan name
        its study, so "proxy" there would mislead (with Optuna it refines its proxy trials in
        "<study>-real"). With `fresh`, `identity` (`StudyIdentity.digest`) is appended."""
        if self.study is not None:
            return self.study
        parts = [(self.model_spec or model_name).replace(":", "-"), self.objective]
        if self.task and not self.task.startswith("zoo:"):
            # The task's inputs weigh the proxy: other data, other trials.
            parts.append("task" + hashlib.sha256(self.task.encode()).hexdigest()[:8])
        if self.budget.size_bytes is not None:
            parts.append(f"size{int(self.budget.size_bytes)}")
        if self.budget.latency_ms is not None:
            parts.append(f"lat{self.budget.latency_ms:g}ms")
        if self.budget.macs is not None:
            parts.append(f"macs{self.budget.macs}")
        if self.pareto:
            parts.append("pareto")
        if self.fresh and identity:
            parts.append(identity)
        return "-".join(parts)

    def with_(self, **changes: Any) -> SearchConfig:
        """A copy with `changes` (validated again)."""
        return replace(self, **changes)

    # -- JSON -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready document with a format tag and version (the storage's password masked)."""
        data = asdict(self)
        data["storage"] = display_url(self.storage)
        data["knobs"], data["overrides"] = self.knobs.to_dict(), dict(self.overrides)
        return {"format": CONFIG_FORMAT, "version": CONFIG_VERSION, **data}

    def summary(self) -> dict[str, Any]:
        """`to_dict()` without the latency predictor's state (for provenance and messages)."""
        data = self.to_dict()
        if self.latency is not None:
            data["latency"] = {
                k: self.latency.get(k) for k in ("kind", "fingerprint") if k in self.latency
            }
        return data

    @classmethod
    def from_dict(cls, data: object) -> SearchConfig:
        """The config a `to_dict()` document describes.

        Raises:
            PlannerError: not a search config, a newer version, or invalid fields (the message
                names the field).
        """
        if not isinstance(data, Mapping) or data.get("format") != CONFIG_FORMAT:
            raise PlannerError("not a compplan search config")
        if data.get("version") != CONFIG_VERSION:
            raise PlannerError(
                f"search config version {data.get('version')} is not supported (this compplan "
                f"reads version {CONFIG_VERSION}); recreate the study with this compplan"
            )
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        unknown = sorted(set(data) - known - {"format", "version"})
        if unknown:
            raise PlannerError(f"search config: unknown fields {', '.join(unknown)}")
        try:
            values["budget"] = Budget(**(values.get("budget") or {}))
            if values.get("real") is not None:
                values["real"] = RealSettings(**values["real"])
            if values.get("ray") is not None:
                values["ray"] = RaySettings(**values["ray"])
            return cls(**values)
        except PlanError as error:
            raise PlannerError(f"search config: {error}") from None
        except TypeError as error:
            raise PlannerError(f"search config: {error}") from None
