"""The Ray backend: a problem's trials scheduled by Ray Tune on a Ray cluster.

A Ray Tune `Tuner` runs the study's parameters: `OptunaSearch` proposes with the same seeded
sampler as the Optuna backend (the exact solver's answer first), each trial runs in a Tune actor
with the resources asked for (it sets torch's thread count to its CPUs), and for the real
objective each trial applies its plan, fine-tunes it and reports validation accuracy after
applying (epoch 0) and after every epoch, while ASHA stops poor trials after their first epochs
(its clock is the "epoch" metric, so a trial that runs to the end has fine-tuned every epoch asked
for). As many trials run at once as the cluster has slots; actors are reused and fetch the
problem once, because a fresh actor costs seconds. Tune keeps its experiment in
`<results>/<study name>` with the search's config beside it; the same study name resumes it with
`Tuner.restore`, and an experiment made by another search is refused.

Feasibility: `OptunaSearch` has no constraint channel, so a trial reports "score", its proxy when
it keeps every budget and a penalty above any feasible proxy when it does not; budget repair keeps
the size budget before the trial runs, so the penalty only meets latency and MACs budgets.

The cluster: `RaySettings.address` "HOST:PORT" joins a running one (`scripts/cluster_up.sh`, or
`ray start` on real machines) as it is; None starts a local Ray for this search, with a temp folder
and an auth token of its own, every process listening on loopback only, and stops it after. A
wrong address fails within seconds.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from planner.backends._base import (
    Progress,
    SearchBackend,
    exact_answer,
    make_sampler,
    score_proposal,
)
from planner.config import SearchConfig
from planner.errors import PlannerError
from planner.knob_restrictions import SearchKnobs
from planner.latency_repair import Repair
from planner.problem import Problem
from planner.results import SearchResult, build_result
from planner.solver import ExactSolver

log = logging.getLogger("compplan")

__all__ = ["INFEASIBLE_SCORE", "RayBackend", "check_address"]

# A feasible trial's score is its proxy; an infeasible one's is this plus its worst violation,
# above any proxy a plan can have (a relative squared error summed over layers stays far below).
INFEASIBLE_SCORE = 1e6
# Written beside each Tune experiment: the search that made it, checked before a restore.
CONFIG_FILE = "compplan-config.json"
# The config fields that make two searches the same experiment (not where or how fast it runs).
_SAME_SEARCH = ("model_spec", "input_shape", "task", "budget", "protect_ends", "knobs", "overrides")
_SAME_SEARCH += ("objective", "real", "sampler", "pareto", "repair")
# Where Ray reads its auth settings (the driver and every process it starts, which inherit them).
_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def check_address(address: str, timeout: float = 3.0) -> tuple[str, int]:
    """HOST and PORT of `address`, after checking that something listens there.

    Raises:
        PlannerError: a malformed address, or nothing answering (said within `timeout` s,
            where `ray.init` would retry for a minute).
    """
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise PlannerError(
            f"Ray address '{address}': give HOST:PORT of the head node (ray start --head --port)"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as error:
        raise PlannerError(
            f"no Ray head answers at {address} ({error.strerror or error}); start one with "
            "`scripts/cluster_up.sh` or `ray start --head --port PORT`, or leave --address out "
            "for a local Ray"
        ) from None
    return host, int(port)


def _reload_ray_auth() -> None:
    """Make this process's Ray read its auth settings from `os.environ` again: it caches the
    token it loaded, and a second local Ray in one process must not present the first one's."""
    from ray._raylet import AuthenticationTokenLoader, Config

    # The config before the token, as Ray's own tests reset it (`reset_auth_token_state`).
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def _loopback_node_ip():
    """Let `ray.init(_node_ip_address="127.0.0.1")` keep that address.

    Ray swaps a loopback node address for the machine's own (`resolve_ip_for_localhost`), except
    where it does not support clusters (macOS, Windows: `ENABLE_RAY_CLUSTER`, read from
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when Ray is imported). A node on loopback is what makes its
    processes bind loopback: the GCS, the raylet (node and object managers), the core workers'
    gRPC servers (driver and workers), the runtime-env agent and the dashboard agent (gRPC, HTTP,
    metrics) bind 127.0.0.1 when the node address is loopback, and every interface otherwise.
    """
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def _same_search(config: SearchConfig) -> dict[str, Any]:
    """The fields that make two searches one experiment, as they read back from JSON (tuples as
    lists), so that a config and the marker it wrote compare equal."""
    return json.loads(json.dumps({k: v for k, v in config.to_dict().items() if k in _SAME_SEARCH}))


def _knobs_document(knobs: object) -> object:
    """A marker's knobs as this compplan writes them (an older one wrote them unversioned)."""
    try:
        return json.loads(json.dumps(SearchKnobs.from_dict(knobs).to_dict()))
    except PlannerError:  # not knobs at all: the experiment differs
        return knobs


# Objects a worker process has fetched from the object store, by reference: a reused actor's
# next trial finds its problem here instead of unpickling it again.
_SHARED: dict[str, Any] = {}


def _shared(ref):
    """`ray.get(ref)`, once per worker process."""
    import ray

    key = ref.hex()
    if key not in _SHARED:
        _SHARED[key] = ray.get(ref)
    return _SHARED[key]


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's parameters by their study names ("<layer>/option"): `OptunaSearch` hands them
    over nested at every "/" ({"<layer>": {"option": 3}}), which the study space cannot read (it
    would decode every layer at its default)."""
    from ray.tune.utils.util import flatten_dict

    return flatten_dict(config, delimiter="/")


def _trial_metrics(proposal) -> dict[str, Any]:
    import ray

    e = proposal.evaluation
    violation = max([0.0, *e.constraints.values()])
    return {
        **proposal.metrics(),
        "score": e.proxy if e.feasible else INFEASIBLE_SCORE * (1 + violation),
        "node": ray.get_runtime_context().get_node_id(),
        "pid": os.getpid(),
        "reported_at": time.time(),
    }


def _run_trial(config: dict[str, Any], problem: Problem, repair, objective, cpus: float) -> None:
    """One trial inside a Ray worker: repair, decode, evaluate; with a real objective also
    apply, fine-tune and report accuracy per epoch (ASHA may stop it after any epoch)."""
    import torch
    from ray import tune

    torch.set_num_threads(max(1, int(cpus)))
    proposal = score_proposal(problem, repair, _flat(config))
    metrics = _trial_metrics(proposal)
    if objective is None:
        tune.report(metrics)
        return
    if not proposal.evaluation.feasible:
        tune.report({**metrics, "accuracy": -1.0, "epoch": objective.epochs})
        return
    applied: list[float] = []

    def report(step: int, accuracy: float) -> bool:
        applied.append(applied[0] if applied else accuracy)
        tune.report(
            {
                **metrics,
                "accuracy": float(accuracy),
                "applied_accuracy": applied[0],  # right after applying, before fine-tuning
                "epoch": step,
            }
        )
        return False  # ASHA stops the trial itself

    objective(proposal.plan, report)


class RayBackend(SearchBackend):
    """A problem's search on Ray Tune (see the module docstring).

    Args:
        problem: the search problem.
        config: its settings (`config.ray` says where and with what resources).
        repair: the budget repair, or None.
        solver: the exact solver, to seed the search.
        objective: the real objective (`planner.objectives.RealObjective`) to score trials by
            fine-tuning, or None to score them by the proxy.

    The cluster's address is checked by whoever builds the problem, before building it
    (`check_address`: a wrong one fails within seconds).
    """

    name = "ray"

    def __init__(
        self,
        problem: Problem,
        config: SearchConfig,
        *,
        repair: Repair | None,
        solver: ExactSolver,
        objective=None,
    ):
        self.problem = problem
        self.config = config
        self.settings = config.ray
        self.repair = repair
        self.solver = solver
        self.objective = objective
        self.results = Path(self.settings.results).resolve()
        self.path = self.results / problem.study_name
        self._grid = None

    # -- the cluster ------------------------------------------------------------------------------

    def _connect(self):
        """ray.init for this search; returns a callable that undoes what it started."""
        import ray

        if ray.is_initialized():
            return lambda: None
        address = self.settings.address
        if address is not None:
            try:
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            except ConnectionError as error:
                raise PlannerError(
                    f"cannot join the Ray cluster at {address} ({error}); a cluster with token "
                    "auth needs RAY_AUTH_MODE=token and its RAY_AUTH_TOKEN (`source DIR/env` "
                    "after scripts/cluster_up.sh)"
                ) from None
            return ray.shutdown
        # A local Ray of our own: its own short temp folder (Ray's socket paths are limited to
        # about 100 characters), no dashboard, stopped when the search ends. No one else is meant
        # to reach it: every process listens on loopback only (`_loopback_node_ip`), and it
        # takes a token of its own, made for it and kept only in the environment its processes
        # inherit, not the user's ~/.ray/auth_token that every Ray they start would share (nor
        # a token of theirs for another cluster). The environment is put back after.
        temp = tempfile.mkdtemp(prefix="compplan-ray-")
        auth = {name: os.environ.get(name) for name in _AUTH_VARS}
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)  # a file of theirs would not be ours
        _reload_ray_auth()

        def stop() -> None:
            ray.shutdown()
            for name, value in auth.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            _reload_ray_auth()
            shutil.rmtree(temp, ignore_errors=True)

        try:
            with _loopback_node_ip():
                ray.init(
                    address="local",
                    _node_ip_address="127.0.0.1",
                    _temp_dir=temp,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
            node = ray.util.get_node_ip_address()
            if not ipaddress.ip_address(node).is_loopback:  # another Ray that resolves it anew
                raise PlannerError(
                    f"the local Ray took the address {node}, not loopback, and would listen on "
                    "every interface; start a cluster (scripts/cluster_up.sh) and give --address"
                )
        except BaseException:
            stop()
            raise
        return stop

    def _slots(self) -> int:
        """How many trials the cluster runs at once, as it stands now."""
        import ray

        total = ray.cluster_resources()
        slots = int(total.get("CPU", 0) // self.settings.cpus_per_trial)
        if self.settings.gpus_per_trial > 0:
            slots = min(slots, int(total.get("GPU", 0) // self.settings.gpus_per_trial))
        return max(1, slots)

    def _wait_for_resources(self, patience: float = 60.0) -> None:
        """Wait until the cluster can run one trial (nodes still joining), or say it cannot:
        Tune itself would wait forever."""
        import ray

        want_cpus, want_gpus = self.settings.cpus_per_trial, self.settings.gpus_per_trial
        deadline = time.monotonic() + patience
        while True:
            total = ray.cluster_resources()
            cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
            if cpus >= want_cpus and gpus >= want_gpus:
                return
            if time.monotonic() > deadline:
                raise PlannerError(
                    f"the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs, and a trial asks "
                    f"for {want_cpus:g} and {want_gpus:g}: lower --cpus-per-trial/"
                    "--gpus-per-trial or add nodes"
                )
            time.sleep(1)

    # -- the experiment ---------------------------------------------------------------------------

    def _trainable(self):
        """The Tune trainable. The problem goes into the object store once, and each worker
        process unpickles it once (`_shared`), not once per trial."""
        import ray
        from ray import tune

        problem_ref = ray.put((self.problem, self.repair, self.objective))
        cpus = self.settings.cpus_per_trial

        def compplan_trial(config: dict[str, Any]) -> None:
            problem, repair, objective = _shared(problem_ref)
            _run_trial(config, problem, repair, objective, cpus)

        return tune.with_resources(
            compplan_trial,
            {"cpu": self.settings.cpus_per_trial, "gpu": self.settings.gpus_per_trial},
        )

    def _check_same_search(self) -> None:
        """Refuse to resume an experiment another search made (another objective, budget, ...)."""
        marker = self.path / CONFIG_FILE
        mine = _same_search(self.config)
        try:
            theirs = json.loads(marker.read_text())
        except (OSError, ValueError):
            theirs = None
        # The model's weights, the task's data, the predictor: what the config's specs name
        # may have changed under the same specs (`planner.identity`).
        stored = theirs.pop("identity", None) if isinstance(theirs, dict) else None
        if isinstance(theirs, dict) and "knobs" in theirs:
            theirs["knobs"] = _knobs_document(theirs["knobs"])
        identity = self.problem.identity
        changed = identity.changes(stored)
        if theirs == mine and changed:
            where = f"the Tune results folder {self.results}"
            fresh = self.problem.fresh_study_name
            raise PlannerError(identity.refusal(self.problem.study_name, where, changed, fresh))
        if theirs != mine:
            what = "an unknown search" if theirs is None else f"a {theirs.get('objective')} search"
            raise PlannerError(
                f"the Tune experiment in {self.path} was made by {what} that differs from this "
                "one; give another --study (or --ray-results), or remove that folder"
            )

    def _new_tuner(self, trainable):
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch

        real = self.objective is not None
        metric, mode = ("accuracy", "max") if real else ("score", "min")
        self.exact = exact_answer(self.config, self.solver)
        seed = self.exact if "params" in self.exact else None
        if seed is not None:
            self.exact = {**seed, "seeded": True}
        searcher = OptunaSearch(
            space=self.problem.study_space.distributions,
            metric=metric,
            mode=mode,
            points_to_evaluate=[seed["params"]] if seed else None,
            sampler=make_sampler(self.config.sampler_name, self.config.seed),
        )
        scheduler = None
        if real:
            # The clock is the epoch, not the report count: the report made right after
            # applying (epoch 0) must not use up an epoch of the trial's allowance.
            scheduler = ASHAScheduler(
                time_attr="epoch",
                max_t=max(1, self.objective.epochs),
                grace_period=1,
                reduction_factor=2,
            )
        return tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=metric,
                mode=mode,
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=self._n_trials,
                # With a search algorithm Tune keeps one trial pending at a time, so a finished
                # trial's reused actor takes the next before a new actor can start elsewhere:
                # every trial would run on the first node. Asking for the cluster's slots at
                # once starts an actor on each node.
                max_concurrent_trials=self._slots(),
                time_budget_s=self._timeout,
                trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
                # One actor per concurrent trial, kept for the next one: a new actor costs a
                # process and torch's import, seconds per trial.
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=self.problem.study_name,
                storage_path=str(self.results),
                failure_config=tune.FailureConfig(max_failures=self.settings.max_failures),
                verbose=0,
            ),
        )

    def run(
        self,
        n_trials: int | None = 100,
        timeout: float | None = None,
        *,
        new_trials: int | None = None,
        progress: Progress | None = None,
    ) -> SearchResult:
        """Run (or resume) the study's Tune experiment until it holds `n_trials` trials or
        `timeout` seconds pass. `new_trials` and `progress` are not offered: Tune schedules the
        whole experiment itself."""
        from ray import tune

        if n_trials is None or new_trials is not None:
            raise PlannerError("the Ray backend runs a given number of trials (n_trials)")
        self._n_trials, self._timeout = n_trials, timeout
        resume = tune.Tuner.can_restore(str(self.path))
        if resume:
            self._check_same_search()  # before starting any Ray process
        stop = self._connect()
        try:
            self._wait_for_resources()
            trainable = self._trainable()
            if resume:
                log.info("resuming the Tune experiment in %s", self.path)
                tuner = tune.Tuner.restore(
                    str(self.path), trainable=trainable, resume_errored=True, restart_errored=False
                )
            else:
                tuner = self._new_tuner(trainable)
                self.path.mkdir(parents=True, exist_ok=True)
                marker = {**_same_search(self.config), "identity": self.problem.identity.to_dict()}
                (self.path / CONFIG_FILE).write_text(json.dumps(marker))
            # Tune prints its tables and hints on stdout; stdout is the caller's (--json).
            with contextlib.redirect_stdout(sys.stderr):
                self._grid = tuner.fit()
        finally:
            stop()
        return self.result()

    def result(self) -> SearchResult:
        """The result over the experiment's trials (those of the last `run`)."""
        rows = []
        for number, result in enumerate(self._grid or []):
            metrics = result.metrics or {}
            row = {
                "number": number,
                "state": "FAIL" if result.error is not None else "COMPLETE",
                "value": metrics.get("proxy"),
                **{key: metrics.get(key) for key in ("size_bytes", "latency_ms", "macs")},
                "feasible": bool(metrics.get("feasible", False)),
                **{key: metrics.get(key) for key in ("node", "reported_at", "repaired")},
                **{f"params_{k}": v for k, v in _flat(result.config or {}).items()},
            }
            if self.objective is not None:
                for key in ("accuracy", "applied_accuracy", "epoch"):
                    row[key] = metrics.get(key)
            rows.append(row)
        return build_result(
            self.problem,
            pd.DataFrame(rows),
            storage=str(self.path),
            source="compplan search (ray)",
            exact=getattr(self, "exact", None),
            maximize="accuracy" if self.objective is not None else None,
        )
