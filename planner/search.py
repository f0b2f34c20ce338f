"""`Planner`: the facade over the search's stages, for one model and one `SearchConfig`.

    planner = Planner(model, example_inputs, budget=Budget(size_bytes=1.2 * 2**20))
    result = planner.search(n_trials=300)
    result.best_plan.save("plan.json")

The stages, each with one job (DESIGN.md, Search):
- `planner.problem.Problem`: graph, space, options, proxy table, sizes and latencies, built once;
- `planner.solver.ExactSolver`: the proxy's optimum under the budgets, and the balanced plans;
- a `planner.backends.SearchBackend`: Optuna (trials here, kept in a storage that workers share)
  or Ray Tune (trials on a cluster), both seeded by the exact solver and proposing with the same
  seeded sampler;
- `planner.refine.Refiner`: the best plans scored by an `Objective` (the real one fine-tunes), and
  per-layer learning rates for the winner.
`Planner.run()` is the whole pipeline `compplan search` runs: search, then (real objective,
Optuna) refinement and learning-rate tuning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from torch import Tensor, nn

from engine.task_spec import resolve_task
from planner.backends import OptunaBackend, Progress, RayBackend, check_address, make_repair
from planner.config import SearchConfig
from planner.errors import PlannerError
from planner.objectives import Objective
from planner.problem import Evaluation, Problem
from planner.refine import Refiner
from planner.results import SearchResult
from planner.solver import ExactSolver
from planner.storage import open_storage
from planner.verify import verified_plan
from search_spaces.graph import ModelGraph
from search_spaces.plan import Plan

__all__ = ["Planner", "PlannerError", "SearchOutcome", "SearchResult"]

_CONFIG_FIELDS = {f.name for f in fields(SearchConfig)}


@dataclass
class SearchOutcome:
    """What `Planner.run` found: the search's result, and the plan it hands over.

    Attributes:
        result: the search's `SearchResult`.
        plan: the winner: the refined one where the real objective ran, else the search's best.
        refined: refinement's answer (`Refiner.refine`), or None.
        learning_rates: the learning-rate search's answer, or None.
        evaluation: `plan`'s size, predicted latency, MACs and proxy, computed again for the
            model and budgets at hand (`Problem.recheck`): the figures to show for it.
        chosen: which trial or candidate `plan` is, in words ("trial 42", "proxy trial 131",
            "balanced ×4"), as its provenance names it.
        verified: with `SearchConfig.verify`, every candidate measured on the runtime
            (`planner.verify.VerifiedPlan`).
    """

    result: SearchResult
    plan: Plan | None
    refined: dict[str, Any] | None = None
    learning_rates: dict[str, Any] | None = None
    evaluation: Evaluation | None = None
    chosen: str = ""
    verified: list | None = None


class Planner:
    """Search the best plan of `model` under a `SearchConfig`.

    Args:
        model: the trained model (not changed).
        example_inputs: one input batch (a tensor or a tuple of tensors).
        config: the search's settings; or give its fields as keyword arguments
            (`Planner(model, x, budget=Budget(size_bytes=...), storage="memory")`).
        graph: the model's graph, when discovered already (saves a trace).
        task: the task the real objective fine-tunes and scores on: an `engine.task.Task`, or a
            task spec ("data:train.npz", "inputs:ids.npz", "file.py:make_task"; resolved here,
            trusted, and stored in the config for workers); its calibration inputs also weigh
            the proxy's layers. None: the config's task spec, if any.
        calibration: input batches for the proxy's layer sensitivities (default: the task's
            calibration inputs, else `example_inputs`).
        latency: a fitted latency predictor or the path of a saved one (stored in the config).
        problem_type: the `Problem` class to build (a subclass stands in for a slower
            objective in benchmarks).
        progress: progress bars on stderr while the problem is built (the CLI's on a terminal).
        joining: a worker joining the config's study (`from_study`): a study made for another
            problem is refused at once, in a worker's words.

    Raises:
        BudgetError: a budget below what the space can reach, or a latency budget without a
            latency predictor.
        PlannerError: a setting the chosen backend cannot honour, a bad storage URL or address.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Tensor | tuple[Tensor, ...],
        config: SearchConfig | None = None,
        *,
        graph: ModelGraph | None = None,
        task=None,
        calibration=None,
        latency=None,
        problem_type: type[Problem] = Problem,
        progress: bool = False,
        joining: bool = False,
        **settings: Any,
    ):
        unknown = sorted(set(settings) - _CONFIG_FIELDS)
        if unknown:
            raise TypeError(f"unknown Planner settings: {', '.join(unknown)}")
        base = config or SearchConfig()
        predictor = _latency_predictor(latency, base)
        if predictor is not None and base.latency is None and "latency" not in settings:
            # The config carries its predictor; a Python object of the user's own is named only
            # (a worker then needs it handed over again).
            settings["latency"] = (
                predictor.to_document()
                if hasattr(predictor, "to_document")
                else {"kind": f"python:{type(predictor).__qualname__}"}
            )
        if isinstance(task, str):
            settings.setdefault("task", task)
        elif task is not None and base.task is None and getattr(task, "spec", None):
            settings.setdefault("task", task.spec)  # a task that knows its spec is recorded
        config = base.with_(**settings) if settings else base
        self.config = config
        if (task is None or isinstance(task, str)) and config.task:
            task = resolve_task(config.task, model, distill=config.real.distill)
        self.task = task
        # What fails fast is checked before the problem's minutes of set-up on a large model.
        self.real = _real_objective(self.config, self.task, model, example_inputs)
        self.storage = None
        if config.backend == "ray" and config.ray.address is not None:
            check_address(config.ray.address)
        elif config.backend == "optuna":
            self.storage = open_storage(config.storage)
        if calibration is None and task is not None:
            calibration = [task.calibration()]
        self.problem = problem_type(
            model,
            example_inputs,
            config,
            graph=graph,
            latency=predictor,
            calibration=calibration,
            progress=progress,
        )
        self.solver = ExactSolver(self.problem)
        repair = make_repair(config, self.problem)
        if config.backend == "ray":
            self.backend = RayBackend(
                self.problem, config, repair=repair, solver=self.solver, objective=self.real
            )
        else:
            self.backend = OptunaBackend(
                self.problem,
                config,
                self.storage,
                repair=repair,
                solver=self.solver,
                joining=joining,
            )
            if joining:
                self.backend.check_study()

    @classmethod
    def from_study(
        cls,
        storage: str,
        study: str,
        *,
        trust_specs: bool = False,
        progress: bool = False,
        **settings: Any,
    ) -> Planner:
        """The planner a study's stored `SearchConfig` describes, to join it as a worker.

        The model and the task come from the config's specs (they must resolve here too; zoo
        models and tasks always do, data files where the same path holds them) and the latency
        predictor from the document embedded in it. `settings` change config fields (a worker's
        own seed; `seed_exact=False`: the study's creator seeds it, once; `task`: the task's
        data where this worker finds it); `runtime` is not changed but checked: a study that
        prices latency on another runtime is refused.

        Args:
            trust_specs: import and run the code a model or task spec of the study names (a
                file.py:callable, a package's callable); without it only zoo specs and data
                files are used, since anyone who can write to the storage chose them.
            progress: progress bars on stderr while the problem is built.

        Raises:
            PlannerError: no such study, one that holds no config of this compplan, specs of
                code without `trust_specs`, or a study made for another problem than the one
                rebuilt here (model files or task data changed: `planner.identity`).
        """
        from engine.task_spec import load_with_task
        from planner.backends import read_study_config

        runtime = settings.pop("runtime", None)
        config = read_study_config(storage, study).with_(
            storage=storage, study=study, fresh=False, **settings
        )
        if runtime is not None and runtime != config.priced_runtime:
            raise PlannerError(
                f"study '{study}' prices latency on {config.priced_runtime}, not {runtime}: "
                f"join it with --runtime {config.priced_runtime} (or without --runtime)"
            )
        if not config.model_spec:
            raise PlannerError(
                f"study '{study}' was created from a model handed over in Python (no model spec): "
                "a worker cannot rebuild it; create it with `compplan search --model SPEC`"
            )
        if not trust_specs and not config.model_spec.startswith("zoo:"):
            raise PlannerError(
                f"study '{study}' names the model spec '{config.model_spec}', which imports and "
                "runs code: pass --trust-specs (trust_specs=True) if you trust the study"
            )
        loaded, spec, task = load_with_task(
            config.model_spec,
            config.task,
            input_shape=config.input_shape,
            distill=config.real.distill,
            trusted=trust_specs or "task" in settings,  # a task handed over here is the caller's
            source=f"study '{study}'",
        )
        return cls(
            loaded.module,
            loaded.example_inputs,
            config.with_(task=spec),
            task=task,
            progress=progress,
            joining=True,
        )

    # -- the stages' answers --------------------------------------------------------------------

    @property
    def study_name(self) -> str:
        return self.problem.study_name

    @property
    def study_space(self):
        return self.problem.study_space

    @property
    def budget(self):
        return self.problem.budget

    @property
    def proxy(self):
        return self.problem.proxy

    @property
    def worker_id(self) -> str | None:
        return getattr(self.backend, "worker_id", None)

    def exact(self, *, max_layer_ratio: float | None = None) -> dict[str, Any]:
        """The proxy's optimum under the budgets (`ExactSolver.solve`)."""
        return self.solver.solve(max_layer_ratio=max_layer_ratio)

    def balanced(self, cap: float, start: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The balanced plan at `cap` (`ExactSolver.balanced`)."""
        return self.solver.balanced(cap, start)

    def open_study(self):
        """The Optuna study (created with the config stored in it, or loaded to resume)."""
        return self._optuna().open_study()

    def search(
        self,
        n_trials: int | None = 100,
        timeout: float | None = None,
        *,
        new_trials: int | None = None,
        progress: Progress | None = None,
    ) -> SearchResult:
        """Run trials on the backend (`SearchBackend.run`) and return the result over all."""
        return self.backend.run(n_trials, timeout, new_trials=new_trials, progress=progress)

    def result(self) -> SearchResult:
        """The result over every trial kept so far."""
        return self.backend.result()

    def refine(self, objective: Objective, *, candidates: int | None = None) -> dict[str, Any]:
        """The proxy study's best plans and the balanced ones scored by `objective`
        (`Refiner.refine`; default as many candidates as the config says)."""
        real = self.config.real
        return self._refiner().refine(
            self.open_study(),
            objective,
            candidates=candidates or real.n_candidates,
            balanced=real.balanced,
        )

    def tune_learning_rates(
        self, objective: Objective, plan: Plan, *, trials: int = 16
    ) -> dict[str, Any]:
        """Per-layer learning-rate multipliers for `plan` (`Refiner.tune_learning_rates`)."""
        return self._refiner().tune_learning_rates(self.study_name, objective, plan, trials=trials)

    def run(
        self,
        n_trials: int,
        timeout: float | None = None,
        *,
        progress: Progress | None = None,
        measuring: Callable[[str], None] = lambda _: None,
    ) -> SearchOutcome:
        """The pipeline `compplan search` runs: the search; with `config.verify`, its best
        plans measured on the runtime (`planner.verify`; `measuring` is told each label);
        then with the real objective on Optuna, refinement and (`config.real.tune_lr`)
        learning rates (on Ray the trials themselves are scored by the real objective). The
        plan handed over is sized and predicted again (`Problem.recheck`), its provenance
        carrying those figures: one over a budget is never handed over, whatever the study's
        trials say (a study edited, or scored for another model by an older compplan).

        Raises:
            PlannerError: no trial is feasible (every finished trial is kept), or the winner is
                over a budget when computed again.
        """
        result = self.search(n_trials, timeout, progress=progress)
        if result.best_plan is None:
            raise PlannerError(
                f"no feasible plan in {len(result.trials)} trials (kept in {result.storage}, "
                f"study '{result.study_name}'); run more trials (--trials) or loosen the budgets"
            )
        outcome = SearchOutcome(result=result, plan=result.best_plan)
        outcome.chosen = f"trial {result.best['number']}"
        what = f"the best of {len(result.trials)} trials (#{result.best['number']})"
        if self.config.verify:
            outcome.plan, verified = verified_plan(self.problem, result, self.config, measuring)
            outcome.verified, outcome.chosen = verified.candidates, verified.label
            what = f"the best plan measured within the budget ({verified.label})"
        real = self.real
        if real is not None and self.config.backend != "ray":
            outcome.refined = self.refine(real)
            outcome.plan = outcome.refined["plan"]
            outcome.chosen = outcome.refined["candidate"]
            what = f"the best fine-tuned candidate ({outcome.chosen})"
            if self.config.real.tune_lr:
                outcome.learning_rates = self.tune_learning_rates(
                    real, outcome.plan, trials=self.config.real.tune_lr
                )
                outcome.plan = outcome.learning_rates["plan"]
        outcome.evaluation = self.problem.recheck(outcome.plan, what)
        outcome.plan = self.problem.with_figures(outcome.plan, outcome.evaluation)
        return outcome

    # -- helpers ----------------------------------------------------------------------------------

    def _optuna(self) -> OptunaBackend:
        if not isinstance(self.backend, OptunaBackend):
            raise PlannerError("studies, refinement and learning rates need --backend optuna")
        return self.backend

    def _refiner(self) -> Refiner:
        return Refiner(
            self.problem,
            self.solver,
            self._optuna().storage,
            seed=self.config.seed,
            pareto=self.config.pareto,
        )


def _real_objective(config: SearchConfig, task, model: nn.Module, example_inputs):
    """The real objective `config` asks for (None for the proxy).

    Raises:
        PlannerError: the real objective without a task.
    """
    if config.objective != "real":
        return None
    if task is None:
        raise PlannerError(
            f"the real objective needs data, and {config.model_spec or 'the model'} "
            "has no task of its own: give --task SPEC, --data FILE (inputs and labels) or "
            "--inputs FILE (inputs only), or use --objective proxy"
        )
    from planner.real import RealObjective

    real = config.real
    return RealObjective(
        model,
        example_inputs,
        task,
        epochs=real.epochs,
        lr=real.lr,
        distill=real.distill,
        seed=config.seed,
    )


def _latency_predictor(latency, config: SearchConfig):
    """The latency predictor object: given, loaded from a path, or rebuilt from the config."""
    from predictors.latency import load_predictor, predictor_from_document

    if latency is None:
        if config.latency is None:
            return None
        return predictor_from_document(config.latency, source="the study's latency predictor")
    return latency if hasattr(latency, "predict") else load_predictor(latency)
