"""The Optuna backend: trials in this process, kept in an Optuna storage (SQLite, journal,
PostgreSQL), shared by any number of workers.

The sampler works on an in-memory copy of the study: loaded from storage first (so a resumed
search continues where it stopped), then topped up before every proposal with the trials other
processes sharing the storage finished (`compplan worker`). Each finished trial is written to the
storage at once, in one transaction, marked with this process's worker id; writing every
parameter as it is sampled would cost more than the proxy objective itself. Whatever stops the
search (an exception, Ctrl-C, a killed process), every finished trial is in storage, and a trial
never waits there half-done.

Size, predicted latency and MACs are functions of the parameters: each budget becomes an Optuna
constraint, `value / budget − 1` (≤ 0 is feasible; Optuna 5's `trial.set_constraint`), which TPE
and NSGA-II use to steer toward feasible plans.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import Any

import pandas as pd

from planner.backends._base import (
    Progress,
    SearchBackend,
    directions,
    exact_answer,
    make_sampler,
    score_proposal,
)
from planner.config import SearchConfig
from planner.errors import PlannerError
from planner.identity import IDENTITY_ATTR
from planner.latency_repair import Repair
from planner.problem import Problem
from planner.results import SearchResult, build_result
from planner.solver import ExactSolver
from planner.storage import display_url, study_lock

__all__ = ["CONFIG_ATTR", "OptunaBackend", "read_study_config"]

# The study's user attribute holding its `SearchConfig` (what `compplan worker` reads back).
CONFIG_ATTR = "compplan_config"


class OptunaBackend(SearchBackend):
    """Trials in this process (see the module docstring).

    Args:
        problem: the search problem.
        config: its settings (sampler, seed, Pareto, seeding).
        storage: the opened Optuna storage.
        repair: the budget repair, or None.
        solver: the exact solver, to seed a new study.
        joining: a worker joining a study its config describes (refusals say so).
    """

    name = "optuna"

    def __init__(
        self,
        problem: Problem,
        config: SearchConfig,
        storage,
        *,
        repair: Repair | None,
        solver: ExactSolver,
        joining: bool = False,
    ):
        self.problem = problem
        self.joining = joining
        self.config = config
        self.storage = storage
        self.repair = repair
        self.solver = solver
        # Marks this process's trials in a shared study.
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.exact: dict[str, Any] | None = None

    def open_study(self):
        """Create the study in storage, or load it when it exists (resume). A new study records
        the search's config (`CONFIG_ATTR`) for the workers that join it, and its identity
        (`IDENTITY_ATTR`: what decides its trials).

        Raises:
            PlannerError: the study exists and was made for another model, data or settings
                (`planner.identity`): its trials' parameters would mean other plans here.
        """
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        name = self.problem.study_name
        sampler = make_sampler(self.config.sampler_name, self.config.seed)
        # Under the lock, and looked up before created: two processes starting at once create
        # the study once (a journal records every create it is asked for, even a duplicate).
        with self._lock():
            if name in optuna.study.get_all_study_names(self.storage):
                study = optuna.load_study(study_name=name, storage=self.storage, sampler=sampler)
                self._check_identity(study)
            else:
                study = optuna.create_study(
                    storage=self.storage,
                    study_name=name,
                    sampler=sampler,
                    directions=directions(self.config, self.problem),
                )
            if CONFIG_ATTR not in study.user_attrs:
                study.set_user_attr(CONFIG_ATTR, self.config.to_dict())
            if IDENTITY_ATTR not in study.user_attrs:
                # An older compplan's study is taken as it is, and checked from now on.
                study.set_user_attr(IDENTITY_ATTR, self.problem.identity.to_dict())
        return study

    def _check_identity(self, study) -> None:
        identity = self.problem.identity
        changed = identity.changes(study.user_attrs.get(IDENTITY_ATTR))
        if changed:
            where = display_url(self.config.storage)
            if self.joining:
                raise PlannerError(identity.worker_refusal(study.study_name, where, changed))
            fresh = self.problem.fresh_study_name
            raise PlannerError(identity.refusal(study.study_name, where, changed, fresh))

    def check_study(self) -> None:
        """Refuse at once a study in storage that was made for another problem (`open_study`
        checks it too; a worker calls this before it starts, to be told in its own words)."""
        import optuna

        name = self.problem.study_name
        if name in optuna.study.get_all_study_names(self.storage):
            self._check_identity(optuna.load_study(study_name=name, storage=self.storage))

    def _lock(self):
        """The study's lock in the shared storage (`planner.storage.study_lock`)."""
        return study_lock(self.storage, self.config.storage, self.problem.study_name)

    def run(
        self,
        n_trials: int | None = 100,
        timeout: float | None = None,
        *,
        new_trials: int | None = None,
        progress: Progress | None = None,
    ) -> SearchResult:
        """See `SearchBackend.run`; other processes' trials count toward `n_trials`."""
        import optuna

        problem, config = self.problem, self.config
        stored = self.open_study()
        mirror = optuna.create_study(
            storage=optuna.storages.InMemoryStorage(),
            sampler=make_sampler(config.sampler_name, config.seed),
            directions=directions(config, problem),
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
        # The answer is computed on every run (it takes a fraction of a second), so that a
        # resumed study still reports it; only a new study is seeded with it.
        answer = exact_answer(config, self.solver)
        if "params" in answer and in_study == 0:
            mirror.enqueue_trial(answer["params"], user_attrs={"seeded_by": "exact"})
            answer = {**answer, "seeded": True}
        elif "params" in answer:
            note = f"the study held {in_study} trials already; its first run was the one seeded"
            answer = {**answer, "seeded": False, "note": note}
        self.exact = answer
        if new_trials is not None:
            target = new_trials
        else:
            target = None if n_trials is None else max(0, n_trials - in_study)
        deadline = None if timeout is None else time.monotonic() + timeout
        distributions = problem.study_space.distributions
        # With a study-wide target, the count is checked and the trial added under the study's
        # lock: two processes both at 39 of 40 would otherwise both add one.
        counted = shared and new_trials is None and n_trials is not None
        ran, best = 0, _best_row(mirror)
        timings: list[tuple[int, float, float, float]] = []
        while (target is None or ran < target) and (
            deadline is None or time.monotonic() < deadline
        ):
            started = time.perf_counter()
            if shared and ran and not counted:  # the other processes' trials, for the sampler
                _, copied = pull(own=False)
                if copied:
                    best = _best_row(mirror)
            trial = mirror.ask(distributions)
            asked = time.perf_counter() - started
            trial.set_user_attr("worker", self.worker_id)
            proposal = score_proposal(problem, self.repair, trial.params)
            e = proposal.evaluation
            if proposal.repaired:
                trial.set_user_attr("repaired", proposal.repaired)
            trial.set_user_attr("size_bytes", e.size_bytes)
            trial.set_user_attr("macs", e.macs)
            if e.latency_ms is not None:
                trial.set_user_attr("latency_ms", e.latency_ms)
            trial.set_user_attr("feasible", e.feasible)
            for key, value in e.constraints.items():
                trial.set_constraint(key, value)
            values: list[float] = [e.proxy]
            if config.pareto:
                values += [e.size_bytes] + ([e.latency_ms] if e.latency_ms is not None else [])
            frozen = mirror.tell(trial, values)
            if counted:
                with self._lock():
                    in_study, copied = pull(own=False)
                    if in_study >= n_trials:
                        break  # other processes brought the study to its target meanwhile
                    stored.add_trial(frozen)
                if copied:
                    best = _best_row(mirror)
            else:
                stored.add_trial(frozen)
            ran += 1
            in_study += 1
            timings.append(
                (frozen.number, time.perf_counter() - started, e.objective_seconds, asked)
            )
            if e.feasible and (best is None or e.proxy < best["value"]):
                best = _row(frozen)
            if progress is not None:
                progress(in_study, best)
        table = pd.DataFrame(
            timings, columns=["trial", "seconds", "objective_seconds", "ask_seconds"]
        )
        return self.result(stored, timings=table)

    def result(self, study=None, *, timings: pd.DataFrame | None = None) -> SearchResult:
        """The result over every finished trial of the study (opened if not given)."""
        study = study or self.open_study()
        trials = study.trials_dataframe(
            attrs=("number", "state", "values", "params", "user_attrs", "duration")
        )
        trials = trials.rename(columns=lambda c: c.removeprefix("user_attrs_"))
        # "value" is the proxy in both modes; a multi-objective study's other values are the
        # size and latency columns again.
        trials = trials.rename(columns={"values_0": "value"})
        trials = trials.drop(columns=[c for c in trials if c.startswith("values_")])
        return build_result(
            self.problem,
            trials,
            storage=display_url(self.config.storage),
            source="compplan search",
            exact=self.exact,
            timings=timings,
        )


def _row(trial) -> dict[str, Any]:
    return {
        "number": trial.number,
        "value": trial.values[0],
        "size_bytes": trial.user_attrs["size_bytes"],
        "latency_ms": trial.user_attrs.get("latency_ms"),
        "macs": trial.user_attrs.get("macs"),
    }


def _best_row(study) -> dict[str, Any] | None:
    """The best feasible finished trial of `study` as a progress row."""
    from optuna.trial import TrialState

    best = None
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("feasible", False) and (best is None or t.values[0] < best.values[0]):
            best = t
    return None if best is None else _row(best)


def read_study_config(storage_url: str, study: str) -> SearchConfig:
    """The `SearchConfig` a study was created with (what a worker rebuilds its planner from).

    Raises:
        PlannerError: the storage cannot be opened, holds no such study, or the study holds no
            config of this compplan (an older compplan's setup, or another tool's study).
    """
    import optuna

    from planner.storage import open_storage

    storage = open_storage(storage_url, create=False)  # a misspelt path is no new database
    names = optuna.study.get_all_study_names(storage)
    if study not in names:
        held = ", ".join(sorted(names)) or "none"
        raise PlannerError(
            f"no study '{study}' in {display_url(storage_url)} (it holds: {held}); create it with "
            "`compplan search --storage URL --study NAME --trials 0 --model … --size-budget …`"
        )
    attrs = optuna.load_study(study_name=study, storage=storage).user_attrs
    if CONFIG_ATTR not in attrs:
        made_by = "an older compplan" if "compplan" in attrs else "something other than compplan"
        raise PlannerError(
            f"study '{study}' was created by {made_by} and records no search config; run its "
            f"`compplan search … --storage URL --study {study} --trials 0` once to store one "
            "(its trials are kept), or recreate it under a new name"
        )
    return SearchConfig.from_dict(attrs[CONFIG_ATTR])
