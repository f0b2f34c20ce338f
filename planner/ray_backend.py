"""The Ray backend: a planner's trials scheduled by Ray Tune on a Ray cluster.

`RaySearch(planner, ...)` runs the study's parameters (`planner.study_space`) through a Ray Tune
`Tuner`: `OptunaSearch` proposes with the planner's own Optuna sampler (seeded with the exact
solver's answer), each trial runs in a Tune actor with the resources asked for (`cpus_per_trial`,
`gpus_per_trial`; it sets torch's thread count to its CPUs), and for the real objective ASHA stops
poor trials after their first epochs. As many trials run at once as the cluster has slots when the
search starts; actors are reused from trial to trial and fetch the planner once, because a fresh
actor costs seconds (a process, torch's import, the planner). Results come back as the same
`SearchResult` as an Optuna search. Tune keeps its experiment in `<results>/<study name>`; running
again with the same study name resumes it with `Tuner.restore` (finished trials are kept,
unfinished ones run again).

Feasibility: `OptunaSearch` has no constraint channel, so a trial reports "score", its proxy
when it keeps every budget and a penalty above any feasible proxy when it does not; budget repair
(`planner.repair`) keeps the size budget before the trial runs, so the penalty only meets latency
and MACs budgets.

The cluster: `address` "HOST:PORT" joins a running one (`scripts/cluster_up.sh`, or `ray start`
on real machines); None starts a local Ray for this search, with its temp folder of its own, and
stops it after. A wrong address fails within seconds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger("compplan.planner")

__all__ = ["RaySearch", "check_address"]

# A feasible trial's score is its proxy; an infeasible one's is this plus its worst violation,
# above any proxy a plan can have (a relative squared error summed over layers stays far below).
INFEASIBLE_SCORE = 1e6


def check_address(address: str, timeout: float = 3.0) -> tuple[str, int]:
    """HOST and PORT of `address`, after checking that something listens there.

    Raises:
        PlannerError: a malformed address, or nothing answering (said within `timeout` s,
            where `ray.init` would retry for a minute).
    """
    from planner.search import PlannerError

    host, _, port = address.rpartition(":")
    if address.startswith("ray://"):
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


# Objects a worker process has fetched from the object store, by reference: a reused actor's
# next trial finds its planner here instead of unpickling it again.
_SHARED: dict[str, Any] = {}


def _shared(ref):
    """`ray.get(ref)`, once per worker process."""
    import ray

    key = ref.hex()
    if key not in _SHARED:
        _SHARED[key] = ray.get(ref)
    return _SHARED[key]


def _proxy_trial(config: dict[str, Any], planner, cpus: int) -> None:
    """One proxy trial inside a Ray worker: repair, decode, evaluate, report."""
    import ray
    import torch
    from ray import tune

    torch.set_num_threads(max(1, int(cpus)))
    params = dict(config)
    repaired = planner._repair(params) if planner._repair is not None else {}
    plan = planner.study_space.decode({**params, **repaired})
    (e,) = planner.evaluate([plan])
    tune.report(_metrics(e, repaired, ray.get_runtime_context().get_node_id()))


def _real_trial(config: dict[str, Any], planner, real, cpus: int) -> None:
    """One real-objective trial: the plan applied, fine-tuned and scored each epoch (ASHA may
    stop it after any epoch)."""
    import ray
    import torch
    from ray import tune

    torch.set_num_threads(max(1, int(cpus)))
    params = dict(config)
    repaired = planner._repair(params) if planner._repair is not None else {}
    plan = planner.study_space.decode({**params, **repaired})
    (e,) = planner.evaluate([plan])
    node = ray.get_runtime_context().get_node_id()
    metrics = _metrics(e, repaired, node)
    if not e.feasible:
        tune.report({**metrics, "accuracy": -1.0})
        return

    def report(step: int, accuracy: float) -> bool:
        tune.report({**metrics, "accuracy": float(accuracy), "epoch": step})
        return False  # ASHA stops the trial itself

    real(plan, report)


def _metrics(e, repaired: dict[str, int], node: str) -> dict[str, Any]:
    violation = max([0.0, *e.constraints.values()])
    return {
        "proxy": e.proxy,
        "score": e.proxy if e.feasible else INFEASIBLE_SCORE * (1 + violation),
        "feasible": e.feasible,
        "size_bytes": e.size_bytes,
        "latency_ms": e.latency_ms,
        "macs": e.macs,
        "repaired": json.dumps(repaired),
        "node": node,
        "pid": os.getpid(),
        "reported_at": time.time(),
    }


class RaySearch:
    """A planner's search on Ray Tune (see the module docstring).

    Args:
        planner: the `planner.search.Planner` whose space, budgets and proxy are searched.
        address: "HOST:PORT" of a running cluster's head; None for a local Ray.
        cpus_per_trial, gpus_per_trial: each trial's resources.
        results: the folder Tune keeps its experiments in.
        real: a `planner.real.RealObjective` to score trials by fine-tuning (with ASHA);
            None scores them by the proxy.
        max_failures: how often a trial lost with its node (or crashed) is run again.
    """

    def __init__(
        self,
        planner,
        *,
        address: str | None = None,
        cpus_per_trial: float = 1,
        gpus_per_trial: float = 0,
        results: str | Path = "compplan-ray",
        real=None,
        max_failures: int = 2,
    ):
        from planner.search import PlannerError

        if cpus_per_trial <= 0 or gpus_per_trial < 0:
            raise PlannerError("cpus per trial must be above 0 and gpus per trial at least 0")
        self.planner = planner
        self.address = address
        if address is not None:
            check_address(address)
        self.cpus_per_trial = cpus_per_trial
        self.gpus_per_trial = gpus_per_trial
        self.results = Path(results).resolve()
        self.real = real
        self.max_failures = max_failures

    def _connect(self):
        """ray.init for this search; returns a callable that undoes what it started."""
        import ray

        if ray.is_initialized():
            return lambda: None
        if self.address is not None:
            from planner.search import PlannerError

            try:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING)
            except ConnectionError as error:
                raise PlannerError(
                    f"cannot join the Ray cluster at {self.address} ({error}); a cluster with "
                    "token auth needs RAY_AUTH_MODE=token and its RAY_AUTH_TOKEN (`source "
                    "DIR/env` after scripts/cluster_up.sh)"
                ) from None
            return ray.shutdown
        # A local Ray of our own: its own short temp folder (Ray's socket paths are limited to
        # about 100 characters), no dashboard, stopped when the search ends.
        temp = tempfile.mkdtemp(prefix="compplan-ray-")
        ray.init(
            address="local",
            _temp_dir=temp,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )

        def stop() -> None:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)

        return stop

    def _slots(self) -> int:
        """How many trials the cluster runs at once, as it stands now."""
        import ray

        total = ray.cluster_resources()
        slots = int(total.get("CPU", 0) // self.cpus_per_trial)
        if self.gpus_per_trial > 0:
            slots = min(slots, int(total.get("GPU", 0) // self.gpus_per_trial))
        return max(1, slots)

    def _wait_for_resources(self, patience: float = 60.0) -> None:
        """Wait until the cluster can run one trial (nodes still joining), or say it cannot:
        Tune itself would wait forever."""
        import ray

        from planner.search import PlannerError

        deadline = time.monotonic() + patience
        while True:
            total = ray.cluster_resources()
            cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
            if cpus >= self.cpus_per_trial and gpus >= self.gpus_per_trial:
                return
            if time.monotonic() > deadline:
                raise PlannerError(
                    f"the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs, and a trial asks "
                    f"for {self.cpus_per_trial:g} and {self.gpus_per_trial:g}: lower "
                    "--cpus-per-trial/--gpus-per-trial or add nodes"
                )
            time.sleep(1)

    def _trainable(self):
        """The Tune trainable: one trial with this search's planner (and real objective).

        The planner goes into the object store once, and each worker process unpickles it once
        (`_shared`), not once per trial: with actors reused, a trial then costs only itself."""
        import ray
        from ray import tune

        planner_ref = ray.put(self.planner)
        real_ref = None if self.real is None else ray.put(self.real)
        cpus = self.cpus_per_trial

        def trial(config: dict[str, Any]) -> None:
            if real_ref is None:
                _proxy_trial(config, _shared(planner_ref), cpus)
            else:
                _real_trial(config, _shared(planner_ref), _shared(real_ref), cpus)

        # Tune names the experiment's trainable after it; `Tuner.restore` needs the same name.
        trial.__name__ = "compplan_real_trial" if self.real is not None else "compplan_trial"
        return tune.with_resources(trial, {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial})

    def run(self, n_trials: int, timeout: float | None = None):
        """Run (or resume) the study's Tune experiment until it holds `n_trials` trials or
        `timeout` seconds pass; returns a `planner.search.SearchResult`."""
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch

        planner = self.planner
        proxy = planner.proxy()
        planner.prepare_repair(proxy)
        seeds = []
        if planner.seed_exact and not planner.multi_objective:
            try:
                seeds.append(planner.exact()["params"])
            except Exception as error:  # an unreachable budget at keep 1: search unseeded
                log.info("not seeding with the exact solver: %s", error)
        metric, mode = ("accuracy", "max") if self.real is not None else ("score", "min")
        stop = self._connect()
        try:
            self._wait_for_resources()
            trainable = self._trainable()
            path = self.results / planner.study_name
            if tune.Tuner.can_restore(str(path)):
                log.info("resuming the Tune experiment in %s", path)
                tuner = tune.Tuner.restore(
                    str(path), trainable=trainable, resume_errored=True, restart_errored=False
                )
            else:
                searcher = OptunaSearch(
                    space=planner.study_space.distributions,
                    metric=metric,
                    mode=mode,
                    points_to_evaluate=seeds or None,
                    sampler=planner._sampler(),
                )
                scheduler = None
                if self.real is not None:
                    scheduler = ASHAScheduler(
                        time_attr="training_iteration",
                        max_t=max(1, self.real.epochs),
                        grace_period=1,
                        reduction_factor=2,
                    )
                tuner = tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(
                        metric=metric,
                        mode=mode,
                        search_alg=searcher,
                        scheduler=scheduler,
                        num_samples=n_trials,
                        # With a search algorithm Tune keeps one trial pending at a time, so a
                        # finished trial's reused actor takes the next before a new actor can
                        # start elsewhere: every trial would run on the first node. Asking for
                        # the cluster's slots at once starts an actor on each node.
                        max_concurrent_trials=self._slots(),
                        time_budget_s=timeout,
                        trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
                        # One actor per concurrent trial, kept for the next one: a new actor
                        # costs a process and torch's import, seconds per trial.
                        reuse_actors=True,
                    ),
                    run_config=tune.RunConfig(
                        name=planner.study_name,
                        storage_path=str(self.results),
                        failure_config=tune.FailureConfig(max_failures=self.max_failures),
                        verbose=0,
                    ),
                )
            started = time.perf_counter()
            # Tune prints its tables and hints on stdout; stdout is the caller's (--json).
            with contextlib.redirect_stdout(sys.stderr):
                grid = tuner.fit()
            self.seconds = time.perf_counter() - started
        finally:
            stop()
        return self._result(grid)

    def _result(self, grid):
        from planner.search import SearchResult, _pareto

        planner = self.planner
        rows = []
        for number, result in enumerate(grid):
            metrics = result.metrics or {}
            config = result.config or {}
            rows.append(
                {
                    "number": number,
                    "state": "FAIL" if result.error is not None else "COMPLETE",
                    "value": metrics.get("proxy"),
                    "size_bytes": metrics.get("size_bytes"),
                    "latency_ms": metrics.get("latency_ms"),
                    "macs": metrics.get("macs"),
                    "feasible": bool(metrics.get("feasible", False)),
                    "accuracy": metrics.get("accuracy"),
                    "node": metrics.get("node"),
                    "reported_at": metrics.get("reported_at"),
                    "repaired": metrics.get("repaired"),
                    **{f"params_{k}": v for k, v in config.items()},
                }
            )
        trials = pd.DataFrame(rows)
        done = trials[(trials["state"] == "COMPLETE") & trials["feasible"]] if rows else trials
        best, best_plan = {}, None
        if not done.empty:
            key = "accuracy" if self.real is not None else "value"
            row = done.loc[done[key].idxmax() if self.real is not None else done[key].idxmin()]
            params = {k.removeprefix("params_"): _plain(v) for k, v in row.items()}
            params = {k: v for k, v in params.items() if k in planner.study_space.distributions}
            params.update(json.loads(row["repaired"] or "{}"))
            best = {
                "number": int(row["number"]),
                "value": float(row["value"]),
                "size_bytes": float(row["size_bytes"]),
                "latency_ms": None if pd.isna(row["latency_ms"]) else float(row["latency_ms"]),
                "macs": int(row["macs"]),
            }
            if self.real is not None:
                best["validation_accuracy"] = float(row["accuracy"])
            provenance = {
                "source": "compplan search (ray)",
                "objective": "real" if self.real is not None else "proxy",
                "study": planner.study_name,
                "trial": best["number"],
                "proxy": best["value"],
                "size_bytes": best["size_bytes"],
                "storage": str(self.results / planner.study_name),
            }
            if self.real is not None:
                provenance["validation_accuracy"] = float(row["accuracy"])
            best_plan = planner._final_plan(params, **provenance)
        return SearchResult(
            trials=trials,
            pareto=_pareto(trials),
            best_plan=best_plan,
            best=best,
            study_name=planner.study_name,
            storage=str(self.results / planner.study_name),
            exact=None,
        )


def _plain(value):
    """numpy scalars (as pandas hands them back) as Python ones."""
    return value.item() if isinstance(value, np.generic) else value
