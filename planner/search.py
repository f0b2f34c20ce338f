"""`Planner`: a budget-constrained search for the best per-layer plan of one model.

    planner = Planner(model, example_inputs, budget=Budget(size_bytes=1.2 * 2**20))
    result = planner.search(n_trials=300)
    result.best_plan.save("plan.json")

How a search runs (DESIGN.md, Search):
- The study's parameters (`planner.study_space.StudySpace`) are one option per layer from its
  efficient frontier (undominated in proxy and size), its activation bits, and one keep ratio per
  prunable group.
- Size (exact), predicted latency (a saved latency predictor) and MACs are functions of the
  parameters: they are computed before the objective, and each budget becomes an Optuna
  constraint, `value / budget − 1` (≤ 0 is feasible; Optuna 5's `trial.set_constraint`), which
  TPE and NSGA-II use to steer toward feasible plans.
- A budget below what the space can reach is refused at the start (`BudgetError`, with the
  least reachable value).
- The proxy objective (`planner.proxy`) scores a plan in microseconds; the exact solver
  (`planner.exact`) finds the proxy's optimum under the size budget with keep ratios at 1 and
  seeds the study with it (`seed_exact`).
- Storage is any Optuna storage URL: a SQLite file by default, a SQLAlchemy URL (PostgreSQL),
  or a journal file ("journal:PATH"). The same study name resumes; every finished trial is
  written as it finishes, so whatever stops the search, the finished trials are kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import Tensor, nn

from planner.budgets import BudgetError, Reachable, reachable_minimum
from planner.exact import InfeasibleBudget, solve_choices
from planner.options import layer_options
from planner.proxy import ProxyObjective, layer_sensitivities, proxy_table
from planner.repair import SizeRepair
from planner.study_space import StudySpace
from predictors.size import PlanBatch, SizePredictor
from search_spaces.discover import discover
from search_spaces.plan import Budget, Plan, PlanError
from search_spaces.space import SearchSpace

__all__ = ["DEFAULT_STORAGE", "Planner", "PlannerError", "SearchResult", "open_storage"]

log = logging.getLogger("compplan")

DEFAULT_STORAGE = "sqlite:///compplan-studies.db"
SAMPLERS = ("tpe", "nsga2", "random")


# `exact(max_layer_ratio=...)`: the cost of an option past the cap, above any layer's proxy.
BALANCE_PENALTY = 1e3
# The caps of the balanced candidates `refine` fine-tunes beside the proxy's best plans.
BALANCED_CAPS = (4.0, 2.0)
CONNECT_TIMEOUT_S = 5  # seconds a database server has to answer


class PlannerError(PlanError):
    """A search that cannot start: a bad storage URL, sampler or objective."""


def open_storage(url: str):
    """An Optuna storage for `url`: "journal:PATH" (a journal file), a path ending in .log or
    .journal (the same), a SQLAlchemy URL (sqlite:///file.db, postgresql+psycopg2://...), or
    "memory" (kept in this process only: for benchmarks and throwaway searches).

    Raises:
        PlannerError: the URL names no storage Optuna can open, with what to write instead.
    """
    import optuna

    text = str(url)
    if text == "memory":
        return optuna.storages.InMemoryStorage()
    journal = text[len("journal:") :] if text.startswith("journal:") else None
    if journal is None and text.endswith((".log", ".journal")) and "://" not in text:
        journal = text
    if journal is not None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(journal).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(journal))
    if "://" not in text:
        raise PlannerError(
            f"storage '{text}' is not a URL: write sqlite:///{text} for a SQLite file, "
            f"journal:{text} for a journal file, or a SQLAlchemy URL"
        )
    engine_kwargs: dict[str, Any] = {}
    if text.startswith(("postgresql", "mysql")):
        # A wrong host must fail in seconds, not after the OS's TCP timeout (minutes).
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
        engine_kwargs["pool_pre_ping"] = True
    try:
        return optuna.storages.RDBStorage(
            text, engine_kwargs=engine_kwargs, heartbeat_interval=None
        )
    except Exception as error:  # SQLAlchemy's errors: bad dialect, driver, host, file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if isinstance(error, ModuleNotFoundError):
            reason += " (pip install psycopg2-binary for postgresql+psycopg2://)"
        raise PlannerError(
            f"cannot open storage '{text}': {reason} (SQLite: sqlite:///path/to/file.db; "
            "PostgreSQL: postgresql+psycopg2://user:password@host:5432/db)"
        ) from None


@dataclass
class SearchResult:
    """What a search found.

    Attributes:
        trials: one row per trial: number, state, value(s), size_bytes, latency_ms, macs,
            feasible, and the parameters ("params_<name>").
        pareto: the feasible trials no other feasible trial beats in proxy and size (and
            latency where predicted), best proxy first.
        best_plan: the best feasible plan (None if no trial is feasible).
        best: its trial number, value, size_bytes, latency_ms and macs.
        study_name, storage: where the trials are kept.
        exact: the exact solver's plan and figures, when it ran.
    """

    trials: pd.DataFrame
    pareto: pd.DataFrame
    best_plan: Plan | None
    best: dict[str, Any]
    study_name: str
    storage: str
    exact: dict[str, Any] | None = None


@dataclass
class _Evaluation:
    size_bytes: float
    latency_ms: float | None
    macs: int
    proxy: float
    objective_seconds: float = 0.0
    constraints: dict[str, float] = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        return all(v <= 0 for v in self.constraints.values())


class Planner:
    """Search the best plan of `model` under `budget`.

    Args:
        model: the trained model (not changed).
        example_inputs: one input batch (a tensor or a tuple of tensors).
        space: the search space (default: `SearchSpace` of the model with default knobs).
        budget: size in bytes, latency in ms (needs `latency`), MACs; None fields are unlimited.
        objective: "proxy" (per-layer output distortion, lower is better).
        latency: a fitted latency predictor, or the path of a saved one.
        storage: an Optuna storage URL (see `open_storage`); default a SQLite file in the
            working directory.
        study_name: the study to create or resume (default derived from model and budget).
        sampler: "tpe" (default), "nsga2" or "random".
        multi_objective: minimize (proxy, size[, latency]) together with NSGA-II; the result's
            Pareto front is the answer.
        calibration: input batches for the layer sensitivities (default: `example_inputs`);
            an empty sequence weighs every layer the same.
        seed_exact: seed the study with the exact solver's answer (single objective).
        repair: move each proposal's layers along their frontiers onto the size budget's edge
            (`planner.repair`); a trial's plan is its parameters with the changes in its
            "repaired" user attribute applied. Off: the sampler meets the budget on its own.
        seed: the sampler's seed.
        setup: settings recorded in a new study for `compplan worker` (model spec, budget,
            space options, latency predictor path, sampler); the CLI fills it.
        backend: "optuna" (trials in this process, kept in `storage`) or "ray" (trials on a
            Ray cluster by Ray Tune, `planner.ray_backend`).
        address: with backend "ray": HOST:PORT of the cluster's head; None for a local Ray.
        ray_options: with backend "ray": more `RaySearch` arguments (cpus_per_trial,
            gpus_per_trial, results, real, max_failures).
        model_spec: the spec recorded in plans (for example "zoo:digits").

    Raises:
        BudgetError: a budget below what the space can reach, or a latency budget without a
            latency predictor.
        PlannerError: an unknown objective or sampler.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Tensor | tuple[Tensor, ...],
        *,
        space: SearchSpace | None = None,
        budget: Budget | None = None,
        objective: str = "proxy",
        latency=None,
        storage: str | None = None,
        study_name: str | None = None,
        sampler: str = "tpe",
        multi_objective: bool = False,
        calibration: Sequence[Tensor | tuple[Tensor, ...]] | None = None,
        seed_exact: bool = True,
        repair: bool = True,
        seed: int = 0,
        model_spec: str = "",
        setup: dict[str, Any] | None = None,
        backend: str = "optuna",
        address: str | None = None,
        ray_options: dict[str, Any] | None = None,
    ):
        if objective != "proxy":
            raise PlannerError(f"unknown objective '{objective}'; this planner offers 'proxy'")
        if backend not in ("optuna", "ray"):
            raise PlannerError(f"unknown backend '{backend}'; choose optuna or ray")
        if sampler not in SAMPLERS:
            raise PlannerError(f"unknown sampler '{sampler}'; choose one of {', '.join(SAMPLERS)}")
        self.model = model.eval()
        self.inputs = (
            (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)
        )
        self.graph = (
            space.graph
            if space is not None
            else discover(self.model, self.inputs, model_name=model_spec or "model")
        )
        self.space = space or SearchSpace(self.graph)
        self.budget = budget or Budget()
        self.latency = _load_latency(latency)
        self.storage_url = storage or DEFAULT_STORAGE
        self.sampler_name = "nsga2" if multi_objective and sampler == "tpe" else sampler
        self.multi_objective = multi_objective
        self.seed_exact = seed_exact
        self.repair = repair
        self.seed = seed
        self.setup = setup
        self.backend = backend
        self.address = address
        self.ray_options = dict(ray_options or {})
        if backend == "ray" and address is not None:
            from planner.ray_backend import check_address

            check_address(address)  # a wrong address fails now, before any work
        # Marks this process's trials in a shared study.
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.model_spec = model_spec or self.graph.model_name
        self.sizes = SizePredictor(self.graph)
        self.reachable = self._check_budget()
        self.storage = open_storage(self.storage_url)  # a bad URL fails here, before any work
        self.study_name = study_name or self._default_study_name()
        self._calibration = list(calibration) if calibration is not None else [self.inputs]
        self._proxy: ProxyObjective | None = None
        self._repair: SizeRepair | None = None

    # -- setup ------------------------------------------------------------------------------------

    def _check_budget(self) -> Reachable:
        budget = self.budget
        if budget.latency_ms is not None and self.latency is None:
            raise BudgetError(
                "a latency budget needs a latency predictor: build one with `compplan profile` "
                "and `compplan fit-latency`, then pass it (--latency-model PATH)"
            )
        reachable = reachable_minimum(self.space, self.latency)
        if budget.size_bytes is not None and budget.size_bytes < reachable.size_bytes:
            raise BudgetError(
                f"size budget {_bytes(budget.size_bytes)} is below the smallest plan this space "
                f"reaches, {_bytes(reachable.size_bytes)} (×{self._ratio(reachable.size_bytes):.1f}"
                "); raise the budget or widen the knobs (smaller k, fewer bits, lower keep)"
            )
        if (
            budget.latency_ms is not None
            and reachable.latency_ms is not None
            and budget.latency_ms < reachable.latency_ms
        ):
            raise BudgetError(
                f"latency budget {budget.latency_ms:g} ms is below the fastest plan this space "
                f"reaches by the predictor, {reachable.latency_ms:.3g} ms; raise the budget or "
                "allow lower keep ratios"
            )
        if budget.macs is not None and reachable.macs is not None and budget.macs < reachable.macs:
            raise BudgetError(
                f"MACs budget {budget.macs:,} is below the fewest this space reaches, "
                f"{reachable.macs:,}; raise the budget or allow lower keep ratios"
            )
        return reachable

    def _ratio(self, size_bytes: float) -> float:
        return self.graph.baseline_bits / 8 / size_bytes

    def _default_study_name(self) -> str:
        parts = [self.model_spec.replace(":", "-"), "proxy"]
        if self.budget.size_bytes is not None:
            parts.append(f"size{int(self.budget.size_bytes)}")
        if self.budget.latency_ms is not None:
            parts.append(f"lat{self.budget.latency_ms:g}ms")
        if self.budget.macs is not None:
            parts.append(f"macs{self.budget.macs}")
        if self.multi_objective:
            parts.append("pareto")
        return "-".join(parts)

    def proxy(self) -> ProxyObjective:
        """The proxy objective (built on first use: sensitivities and the option table)."""
        if self._proxy is None:
            start = time.perf_counter()
            options = layer_options(self.space)
            sensitivities = (
                layer_sensitivities(self.model, self._calibration, list(self.graph.layers))
                if self._calibration
                else None
            )
            table = proxy_table(self.model, options, sensitivities=sensitivities)
            self._options = options
            self._proxy = ProxyObjective(self.model, self.space, table, options)
            self.study_space = StudySpace(self.space, options, table)
            log.info(
                "proxy table: %d options in %.1f s", _count(options), time.perf_counter() - start
            )
        return self._proxy

    # -- evaluation -------------------------------------------------------------------------------

    def evaluate(self, plans: Sequence[Plan]) -> list[_Evaluation]:
        """Size, predicted latency, MACs, proxy and budget constraints of each plan."""
        from predictors.latency.features import LatencyBatch, plan_layer_configs

        proxy = self.proxy()
        # The plans become arrays once; size, MACs and latency all read the same batch.
        batch = LatencyBatch.from_plans(self.graph, plans)
        sizes = self.sizes.predict(batch.plans)
        latencies = self.latency.predict(self.graph, batch) if self.latency is not None else None
        macs = plan_layer_configs(self.graph, batch).macs.sum(axis=1)
        evaluations = []
        for i, plan in enumerate(plans):
            started = time.perf_counter()
            value = proxy.value(plan)
            e = _Evaluation(
                size_bytes=float(sizes[i]),
                latency_ms=None if latencies is None else float(latencies[i]),
                macs=int(macs[i]),
                proxy=value,
                objective_seconds=time.perf_counter() - started,
            )
            if self.budget.size_bytes is not None:
                e.constraints["size"] = e.size_bytes / self.budget.size_bytes - 1
            if self.budget.latency_ms is not None:
                e.constraints["latency"] = e.latency_ms / self.budget.latency_ms - 1
            if self.budget.macs is not None:
                e.constraints["macs"] = e.macs / self.budget.macs - 1
            evaluations.append(e)
        return evaluations

    def exact(self, *, max_layer_ratio: float | None = None) -> dict[str, Any]:
        """The proxy's optimum over the study's separable part, by `solve_choices`.

        Every keep ratio stays at 1 (pruning couples the layers of a group and their consumers,
        which a per-layer knapsack cannot express); each layer picks an option on its frontier
        and its activation bits. The size budget is exact. A latency budget is exact for the
        additive predictors compplan fits (lookup table, network, FLOPs: a sum over layers plus a
        per-model constant): each choice's latency is the predictor's change when that layer
        alone takes it. The answer is evaluated like any trial, so `feasible` also covers MACs.

        `max_layer_ratio` c keeps every layer within c times the size budget's overall
        compression ratio: options compressing a layer further cost a penalty above any proxy,
        so they are taken only where nothing else meets the budgets. The proxy adds layer errors
        as if they did not compound; this "balanced" optimum is its hedge against plans that
        wipe out a few layers (see `refine`).

        Raises:
            BudgetError: no choice at keep 1 meets the budgets.
        """
        proxy = self.proxy()
        study_space = self.study_space
        names = list(self.graph.layers)
        acts = {name: list(self.space.layers[name].act_bits) for name in names}
        errors = proxy.table.errors
        if max_layer_ratio is not None and self.budget.size_bytes is not None:
            errors = self._capped_errors(proxy, max_layer_ratio)
        costs, sizes = {}, {}
        for name in names:
            frontier = study_space.frontier[name]
            weight = np.asarray(errors[name])[frontier]
            act = np.array([proxy.activation_error(name, bits) for bits in acts[name]])
            # Choice index = position · len(acts) + act index.
            costs[name] = (weight[:, None] + act[None, :]).ravel()
            bits = self._options[name].bits[frontier]
            sizes[name] = np.repeat(bits, len(acts[name]))
        limits, uses = {}, {}
        if self.budget.size_bytes is not None:
            limits["size"] = self.budget.size_bytes * 8 - self.graph.kept_bits
            uses["size"] = sizes
        if self.budget.latency_ms is not None:
            base, deltas = self._latency_deltas(acts)
            limits["latency"] = self.budget.latency_ms - base
            uses["latency"] = deltas
        try:
            solution = solve_choices(costs, uses, limits)
        except InfeasibleBudget as error:
            raise BudgetError(f"exact solver: {error} with every keep ratio at 1") from None
        positions, act_bits = {}, {}
        for name, choice in solution.chosen.items():
            position, act = divmod(choice, len(acts[name]))
            positions[name] = study_space.frontier[name][position]
            act_bits[name] = acts[name][act]
        params = study_space.params_of(positions, act_bits=act_bits)
        plan = self._final_plan(params, source="compplan exact", objective="proxy")
        (evaluation,) = self.evaluate([plan])
        return {
            "plan": plan,
            "proxy": evaluation.proxy,
            "size_bytes": evaluation.size_bytes,
            "latency_ms": evaluation.latency_ms,
            "feasible": evaluation.feasible,
            "seconds": solution.seconds,
            "params": params,
        }

    def _capped_errors(self, proxy: ProxyObjective, cap: float) -> dict[str, np.ndarray]:
        """The proxy's option errors, plus `BALANCE_PENALTY` for every option that compresses
        its layer (at keep 1) more than `cap` times the size budget's overall ratio."""
        overall = self.graph.baseline_bits / (8 * self.budget.size_bytes)
        errors = {}
        for name, layer in self.graph.layers.items():
            floor = 32 * (layer.params + layer.batchnorm_params) / (cap * overall)
            bits = self._options[name].bits
            errors[name] = np.asarray(proxy.table.errors[name]) + np.where(
                bits < floor, BALANCE_PENALTY, 0.0
            )
        return errors

    def balanced(self, cap: float, start: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The best plan by proxy with every layer within `cap` times the overall ratio, as far
        as the budgets allow: the exact solver's (`exact(max_layer_ratio=cap)`, keep 1) when it
        keeps every budget; otherwise `start` (a trial's parameters, with its keep ratios and
        activation bits) repaired against the capped errors. None when neither keeps the
        budgets (or there is no size budget).

        Returns:
            {"params", "proxy", "size_bytes", "feasible": True} or None.
        """
        if self.budget.size_bytes is None:
            return None
        with contextlib.suppress(BudgetError):
            answer = self.exact(max_layer_ratio=cap)
            if answer["feasible"]:
                return answer
        if start is None:
            return None
        repair = SizeRepair(
            self.study_space,
            self._capped_errors(self.proxy(), cap),
            self.budget.size_bytes * 8,
            fill=True,
        )
        params = {**start, **repair(start)}
        (evaluation,) = self.evaluate([self.study_space.decode(params)])
        if not evaluation.feasible:
            return None
        return {
            "params": params,
            "proxy": evaluation.proxy,
            "size_bytes": evaluation.size_bytes,
            "feasible": True,
        }

    def _latency_deltas(self, acts: dict[str, list[int]]) -> tuple[float, dict[str, np.ndarray]]:
        """The predicted latency of the base plan (every layer at its first frontier option and
        first activation bits, keep 1) and, per layer, the change when that layer alone takes
        each (position, activation bits) choice, in the order `exact` numbers them."""
        from predictors.latency.features import LatencyBatch

        arrays = self.study_space.frontier_arrays()
        names = list(self.graph.layers)
        base_act = np.array([acts[name][0] for name in names])
        rows_of = []
        for j, name in enumerate(names):
            for position in range(len(self.study_space.frontier[name])):
                for bits in acts[name]:
                    rows_of.append((j, position, bits))
        n = len(rows_of) + 1  # row 0 is the base plan
        batch = {key: np.repeat(values[:1], n, axis=0) for key, values in arrays.items()}
        act = np.repeat(base_act[None, :], n, axis=0)
        for row, (j, position, bits) in enumerate(rows_of, start=1):
            for key, values in arrays.items():
                batch[key][row, j] = values[position, j]
            act[row, j] = bits
        keep = np.ones((n, len(self.graph.groups)))
        latency = self.latency.predict(
            self.graph, LatencyBatch(plans=PlanBatch(**batch, keep=keep), act_bits=act)
        )
        deltas: dict[str, list[float]] = {name: [] for name in names}
        for row, (j, _, _) in enumerate(rows_of, start=1):
            deltas[names[j]].append(latency[row] - latency[0])
        return float(latency[0]), {name: np.asarray(d) for name, d in deltas.items()}

    # -- the search -------------------------------------------------------------------------------

    def _sampler(self):
        import optuna

        if self.sampler_name == "tpe":
            # Multivariate: one joint sample per trial instead of one model per parameter
            # (about 1.6× less sampler time at ~50 parameters).
            return optuna.samplers.TPESampler(seed=self.seed, multivariate=True)
        if self.sampler_name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=self.seed)
        return optuna.samplers.RandomSampler(seed=self.seed)

    def _directions(self) -> list[str]:
        if not self.multi_objective:
            return ["minimize"]
        return ["minimize"] * (3 if self.latency is not None else 2)

    def prepare_repair(self, proxy: ProxyObjective) -> None:
        """Build the budget repair once (when on and there is a size budget)."""
        if self.repair and self.budget.size_bytes is not None and self._repair is None:
            # Filling to the edge would collapse a multi-objective front onto the budget.
            self._repair = SizeRepair(
                self.study_space,
                proxy.table.errors,
                self.budget.size_bytes * 8,
                fill=not self.multi_objective,
            )

    def __getstate__(self) -> dict[str, Any]:
        # Shipped to Ray workers: everything but the open storage (a database connection).
        state = dict(self.__dict__)
        state["storage"] = None
        return state

    def open_study(self):
        """Create the study in storage, or load it when it exists (resume). A new study records
        `setup` (the settings a `compplan worker` needs to join it) as its "compplan" user
        attribute."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            storage=self.storage,
            study_name=self.study_name,
            sampler=self._sampler(),
            directions=self._directions(),
            load_if_exists=True,
        )
        if self.setup is not None and "compplan" not in study.user_attrs:
            study.set_user_attr("compplan", self.setup)
        return study

    def search(
        self,
        n_trials: int | None = 100,
        timeout: float | None = None,
        *,
        new_trials: int | None = None,
        progress: Callable[[int, dict[str, Any] | None], None] | None = None,
    ) -> SearchResult:
        """Run trials until the study holds `n_trials` finished trials (a resumed study counts
        those it has; so do other processes' trials) or `timeout` seconds pass; returns the
        result over all of them. `new_trials` instead runs exactly that many trials here,
        whatever the study holds (a worker's share).

        The sampler works on an in-memory copy of the study: loaded from storage first (so a
        resumed search continues where it stopped), then topped up before every proposal with
        the trials other processes sharing the storage finished (workers on one PostgreSQL
        database, see `compplan worker`). Each finished trial is written to the storage at once,
        in one transaction, marked with this process's `worker_id`; writing every parameter as
        it is sampled would cost more than the proxy objective itself. Whatever stops the search
        (an exception, Ctrl-C, a killed process), every finished trial is in storage; a trial
        never waits in storage half-done. `progress(finished in the study, best)` is called
        after each trial.
        """
        import optuna

        if self.backend == "ray":
            from planner.ray_backend import RaySearch

            if n_trials is None or new_trials is not None:
                raise PlannerError("the Ray backend runs a given number of trials (n_trials)")
            search = RaySearch(self, address=self.address, **self.ray_options)
            return search.run(n_trials, timeout)
        self.prepare_repair(self.proxy())
        stored = self.open_study()
        mirror = optuna.create_study(
            storage=optuna.storages.InMemoryStorage(),
            sampler=self._sampler(),
            directions=self._directions(),
        )
        shared = not isinstance(self.storage, optuna.storages.InMemoryStorage)
        states = tuple(s for s in optuna.trial.TrialState if s.is_finished())
        known: set[int] = set()  # study numbers of the trials the mirror holds

        def pull(own: bool) -> tuple[int, int]:
            """Copy the study's finished trials the mirror lacks into it (`own`: this worker's
            too); returns how many the study holds and how many were copied."""
            finished = stored.get_trials(deepcopy=False, states=states)
            fresh = [t for t in finished if t.number not in known]
            known.update(t.number for t in fresh)
            copied = [t for t in fresh if own or t.user_attrs.get("worker") != self.worker_id]
            mirror.add_trials(copied)
            return len(finished), len(copied)

        in_study, _ = pull(own=True)
        if self.seed_exact and not self.multi_objective and in_study == 0:
            try:
                seed = self.exact()
                mirror.enqueue_trial(seed["params"], user_attrs={"seeded_by": "exact"})
                self._exact_result = seed
            except BudgetError as error:
                log.info("not seeding with the exact solver: %s", error)
        if new_trials is not None:
            target = new_trials
        else:
            target = None if n_trials is None else max(0, n_trials - in_study)
        deadline = None if timeout is None else time.monotonic() + timeout
        distributions = self.study_space.distributions
        ran = 0
        best = self._best_row(mirror)
        # Per trial: (whole trial, objective, sampler's ask) seconds.
        self.trial_seconds: list[tuple[float, float, float]] = []
        while (target is None or ran < target) and (
            deadline is None or time.monotonic() < deadline
        ):
            started = time.perf_counter()
            if shared and ran:
                in_study, copied = pull(own=False)
                if new_trials is None and n_trials is not None and in_study >= n_trials:
                    break  # other processes brought the study to its target
                if copied:
                    best = self._best_row(mirror)
            trial = mirror.ask(distributions)
            asked = time.perf_counter() - started
            trial.set_user_attr("worker", self.worker_id)
            params = trial.params
            if self._repair is not None:
                repaired = self._repair(params)
                if repaired:
                    trial.set_user_attr("repaired", repaired)
                    params = {**params, **repaired}
            plan = self.study_space.decode(params)
            (e,) = self.evaluate([plan])
            trial.set_user_attr("size_bytes", e.size_bytes)
            trial.set_user_attr("macs", e.macs)
            if e.latency_ms is not None:
                trial.set_user_attr("latency_ms", e.latency_ms)
            trial.set_user_attr("feasible", e.feasible)
            for key, value in e.constraints.items():
                trial.set_constraint(key, value)
            values: list[float] = [e.proxy]
            if self.multi_objective:
                values += [e.size_bytes] + ([e.latency_ms] if e.latency_ms is not None else [])
            frozen = mirror.tell(trial, values)
            stored.add_trial(frozen)
            ran += 1
            in_study += 1
            self.trial_seconds.append((time.perf_counter() - started, e.objective_seconds, asked))
            if e.feasible and (best is None or e.proxy < best["value"]):
                best = _row(frozen)
            if progress is not None:
                progress(in_study, best)
        return self.result(stored)

    def refine(
        self, real, *, candidates: int = 5, balanced: tuple[float, ...] = BALANCED_CAPS
    ) -> dict[str, Any]:
        """Evaluate the proxy study's best feasible plans with the real objective.

        `real` is a `planner.real.RealObjective`. The `candidates` best distinct feasible plans by
        proxy, and the balanced plan for each cap in `balanced` (`balanced(cap)`, from the exact
        solver or the best trial repaired), are applied, fine-tuned and scored in a study of their
        own ("<study name>-real", same storage, maximizing validation accuracy); each epoch's
        accuracy is reported, and Optuna's median pruner stops a candidate that falls behind the
        others. Candidates already scored there (a resumed run) are not run again.

        Why the balanced candidates: the proxy adds the layers' errors as if they did not
        compound, so its best plans tend to squeeze a few layers to almost nothing (on zoo:digits
        at 45×, three convolutions at 1/32 bit per weight), and after fine-tuning they fall below
        a uniform plan of the same size. Plans that keep every layer within a few times the
        overall ratio do not; the real objective picks among both kinds.

        Returns:
            {"plan": best Plan, "accuracy", "proxy", "size_bytes", "candidate" (which one won:
            "proxy trial N" or "balanced ×C"), "trials": DataFrame}.

        Raises:
            PlannerError: the proxy study has no feasible trial (run `search` first).
        """
        import optuna

        study = self.open_study()
        complete = [
            t
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("feasible", False)
        ]
        if not complete:
            raise PlannerError(f"study '{self.study_name}' has no feasible trial: search first")
        self.proxy()
        # (label, params, proxy, size in bytes); plans that store the same thing are one.
        chosen, seen = [], set()

        def add(label: str, params: dict[str, Any], proxy: float, size_bytes: float) -> None:
            key = self.study_space.decode(params).to_json()
            if key not in seen:
                seen.add(key)
                chosen.append((label, params, proxy, size_bytes))

        for t in sorted(complete, key=lambda t: t.values[0]):
            if len(chosen) == candidates:
                break
            add(f"proxy trial {t.number}", trial_params(t), t.values[0], t.user_attrs["size_bytes"])
        if not self.multi_objective:
            best_params = chosen[0][1]
            for cap in balanced:
                answer = self.balanced(cap, best_params)
                if answer is not None:
                    add(
                        f"balanced ×{cap:g}",
                        answer["params"],
                        answer["proxy"],
                        answer["size_bytes"],
                    )
        scored = optuna.create_study(
            storage=self.storage,
            study_name=f"{self.study_name}-real",
            direction="maximize",
            pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
            load_if_exists=True,
        )
        done = {t.user_attrs.get("candidate") for t in scored.trials if t.state.is_finished()}
        for label, params, proxy, size_bytes in chosen:
            if label in done:
                continue
            trial = scored.ask()
            trial.set_user_attr("candidate", label)
            trial.set_user_attr("params", json.dumps(params))
            trial.set_user_attr("proxy", proxy)
            trial.set_user_attr("size_bytes", size_bytes)

            def report(step: int, accuracy: float, trial=trial) -> bool:
                trial.report(accuracy, step)
                return trial.should_prune()

            outcome = real(self.study_space.decode(params), report)
            if outcome.pruned:
                scored.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                scored.tell(trial, outcome.accuracy)
            log.info(
                "real objective: %s, accuracy %.4f%s",
                label,
                outcome.accuracy,
                " (pruned)" if outcome.pruned else "",
            )
        best = scored.best_trial
        return {
            "plan": self._final_plan(
                json.loads(best.user_attrs["params"]),
                source="compplan search (real objective)",
                study=f"{self.study_name}-real",
                candidate=best.user_attrs["candidate"],
                validation_accuracy=best.value,
            ),
            "accuracy": best.value,
            "proxy": best.user_attrs["proxy"],
            "size_bytes": best.user_attrs["size_bytes"],
            "candidate": best.user_attrs["candidate"],
            "trials": scored.trials_dataframe(attrs=("number", "state", "value", "user_attrs")),
        }

    def tune_learning_rates(self, real, plan: Plan, *, trials: int = 16) -> dict[str, Any]:
        """P-Transfer: per-layer fine-tune learning-rate multipliers for a fixed plan.

        The compression choices of `plan` stay as they are; each layer's `lr_mult` is searched
        among the space's choices ({0, 0.01, 0.1, 1} by default; 0 freezes the layer) by
        Optuna's evolutionary NSGA-II sampler, each candidate scored by `real` (a
        `planner.real.RealObjective`). The first candidate is the plan's own multipliers, so the
        answer is never worse on validation data than the plan as it was. Trials go to the study
        "<study name>-lr" in the same storage and resume like the others.

        Returns:
            {"plan": the plan with the best multipliers, "accuracy", "baseline_accuracy",
            "trials": DataFrame}.
        """
        import optuna
        from optuna.distributions import CategoricalDistribution

        distributions = {
            f"{name}/lr_mult": CategoricalDistribution(choices.lr_mult)
            for name, choices in self.space.layers.items()
            if len(choices.lr_mult) > 1
        }
        study = optuna.create_study(
            storage=self.storage,
            study_name=f"{self.study_name}-lr",
            direction="maximize",
            sampler=optuna.samplers.NSGAIISampler(population_size=8, seed=self.seed),
            load_if_exists=True,
        )
        if not study.trials:
            study.enqueue_trial(
                {key: plan.get(key.rsplit("/", 1)[0]).lr_mult for key in distributions}
            )

        def with_multipliers(params: dict[str, Any]) -> Plan:
            layers = dict(plan.layers)
            for key, value in params.items():
                name = key.rsplit("/", 1)[0]
                layers[name] = replace(plan.get(name), lr_mult=value)
            return replace(plan, layers=layers)

        for _ in range(max(0, trials - len(study.trials))):
            trial = study.ask(distributions)
            outcome = real(with_multipliers(trial.params))
            study.tell(trial, outcome.accuracy)
            log.info("learning rates: trial %d, accuracy %.4f", trial.number, outcome.accuracy)
        best = study.best_trial
        tuned = with_multipliers(best.params)
        return {
            "plan": replace(
                tuned,
                provenance={
                    **tuned.provenance,
                    "lr_study": f"{self.study_name}-lr",
                    "lr_validation_accuracy": best.value,
                },
            ),
            "accuracy": best.value,
            "baseline_accuracy": study.trials[0].value,
            "trials": study.trials_dataframe(attrs=("number", "state", "value", "params")),
        }

    def _final_plan(self, params: dict[str, Any], **provenance) -> Plan:
        """The plan of a trial's parameters, for the user: model spec, budget, provenance."""
        plan = self.study_space.decode(params)
        return Plan(
            layers=plan.layers,
            model=self.model_spec,
            fingerprint=self.graph.fingerprint,
            budget=self.budget,
            provenance={"storage": self.storage_url, **provenance},
        )

    def _best_row(self, study) -> dict[str, Any] | None:
        from optuna.trial import TrialState

        best = None
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.user_attrs.get("feasible", False) and (
                best is None or t.values[0] < best.values[0]
            ):
                best = t
        return None if best is None else _row(best)

    def result(self, study=None) -> SearchResult:
        """The result over every finished trial of the study (open it if not given)."""
        study = study or self.open_study()
        trials = study.trials_dataframe(
            attrs=("number", "state", "values", "params", "user_attrs", "duration")
        )
        trials = trials.rename(columns=lambda c: c.removeprefix("user_attrs_"))
        # "value" is the proxy in both modes; a multi-objective study's other values are the
        # size and latency columns again.
        trials = trials.rename(columns={"values_0": "value"})
        trials = trials.drop(columns=[c for c in trials if c.startswith("values_")])
        self.proxy()
        best = self._best_row(study)
        best_plan = None
        if best is not None:
            best_plan = self._final_plan(
                trial_params(study.trials[best["number"]]),
                source="compplan search",
                objective="proxy",
                study=self.study_name,
                trial=best["number"],
                proxy=best["value"],
                size_bytes=best["size_bytes"],
                latency_ms=best["latency_ms"],
            )
        exact = getattr(self, "_exact_result", None)
        return SearchResult(
            trials=trials,
            pareto=_pareto(trials),
            best_plan=best_plan,
            best=best or {},
            study_name=self.study_name,
            storage=self.storage_url,
            exact=None if exact is None else {k: v for k, v in exact.items() if k != "plan"},
        )


def trial_params(trial) -> dict[str, Any]:
    """The parameters of the plan a proxy trial scored: its sampled ones with repair's changes."""
    return {**trial.params, **trial.user_attrs.get("repaired", {})}


def _row(trial) -> dict[str, Any]:
    return {
        "number": trial.number,
        "value": trial.values[0],
        "size_bytes": trial.user_attrs["size_bytes"],
        "latency_ms": trial.user_attrs.get("latency_ms"),
        "macs": trial.user_attrs.get("macs"),
    }


def _pareto(trials: pd.DataFrame) -> pd.DataFrame:
    """Feasible complete trials not beaten in every column of (value, size[, latency])."""
    if trials.empty or "feasible" not in trials:
        return trials.iloc[0:0]
    value = "value"
    done = trials[(trials["state"] == "COMPLETE") & trials["feasible"].fillna(False).astype(bool)]
    columns = [value, "size_bytes"] + (["latency_ms"] if "latency_ms" in done else [])
    points = done[columns].to_numpy(float)
    keep = []
    for i, p in enumerate(points):
        beaten = np.all(points <= p, axis=1) & np.any(points < p, axis=1)
        if not beaten.any():
            keep.append(i)
    return done.iloc[keep].sort_values(value)


def _load_latency(latency):
    if latency is None or hasattr(latency, "predict"):
        return latency
    from predictors.latency import load_predictor

    return load_predictor(latency)


def _count(options) -> int:
    return sum(len(o) for o in options.values())


def _bytes(n: float) -> str:
    if n >= 2**20:
        return f"{n / 2**20:.3f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n:.0f} B"
