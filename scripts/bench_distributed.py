"""Distributed trials: throughput with 1, 2 and 3 workers on Ray and on PostgreSQL.

    .venv/bin/python scripts/bench_distributed.py [--trial-seconds 2] [--per-worker 6]
                                                  [--repeats 3] [--workers 1,2,3]

Each trial is the planner's own (propose, repair, decode, size, proxy, report) plus a fixed
sleep (`--trial-seconds`), so what is measured beyond the sleep is compplan's and the scheduler's
overhead:

- Ray: `Planner(backend="ray")` on a cluster from scripts/cluster_up.sh with W one-CPU worker
  nodes and a head without CPUs (so every trial runs on a worker node), one trial per node at
  a time. Span: from the first trial's start to the last one's report.
- PostgreSQL: a server of the benchmark's own (tests/support/postgres.py), a study created by the
  planner, and W worker processes each running `Planner.search(new_trials=...)` on it, as
  `compplan worker` does. Span: from the first trial's start to the last one's end (the
  timestamps Optuna stores).

Throughput = trials / span; scaling efficiency = throughput / (W × throughput with 1 worker);
overhead per trial = W × span / trials − trial seconds. Medians (and min–max) over repeats.
Writes benchmarks/results/distributed.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from planner import Planner, RaySettings
from planner.problem import Problem
from search_spaces import Budget, discover
from search_spaces.model_spec import load_model

ROOT = Path(__file__).resolve().parents[1]


def _running_postgres():
    """The tests' throwaway server (tests/support/postgres.py), loaded by path: putting tests/
    on sys.path would shadow the packages its test folders are named after."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "compplan_postgres", ROOT / "tests" / "support" / "postgres.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.running_postgres()


class SleepyProblem(Problem):
    """The problem with every trial lasting `sleep_seconds` more (a stand-in for fine-tuning)."""

    sleep_seconds = 2.0

    def evaluate(self, plans):
        time.sleep(self.sleep_seconds)
        return super().evaluate(plans)


def _planner(**options) -> Planner:
    loaded = load_model("zoo:digits")
    graph = discover(loaded.module, loaded.example_inputs, model_name="zoo:digits")
    return Planner(
        loaded.module,
        loaded.example_inputs,
        graph=graph,
        problem_type=SleepyProblem,
        budget=Budget(size_bytes=graph.baseline_bits / 8 / 25),
        model_spec="zoo:digits",
        seed_exact=False,
        **options,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_driver(port: int, folder: Path, workers: int, args, repeat: int, env: dict) -> dict:
    """One search on the cluster, in a process of its own: Ray keeps a cluster's token for the
    life of the process that joined it."""
    os.environ.update(env)  # before Ray is imported: it reads the token then
    import ray.cloudpickle

    # Ray workers cannot import this script: ship SleepyProblem's class by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[SleepyProblem.__module__])
    SleepyProblem.sleep_seconds = args.trial_seconds
    planner = _planner(
        study=f"bench-{workers}-{repeat}",
        backend="ray",
        ray=RaySettings(address=f"127.0.0.1:{port}", results=str(folder / "results")),
    )
    trials = planner.search(n_trials=workers * args.per_worker).trials
    reported = trials["reported_at"]
    span = float(reported.max() - (reported.min() - args.trial_seconds))
    return {"trials": len(trials), "span_s": span, "nodes": int(trials["node"].nunique())}


def _ray_run(workers: int, args, repeat: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="compplan-bench-"))
    port = _free_port()
    env = {**os.environ, "PORT": str(port), "HEAD_CPUS": "0", "CPUS": "1"}
    env["RAY"] = str(Path(sys.executable).parent / "ray")
    subprocess.run(
        ["bash", ROOT / "scripts" / "cluster_up.sh", str(workers), folder],
        env=env,
        check=True,
        capture_output=True,
    )
    try:
        cluster_env = {"RAY_TMPDIR": str(folder / "driver")}
        for line in (folder / "env").read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            cluster_env[key] = value
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(_ray_driver, (port, folder, workers, args, repeat, cluster_env))
    finally:
        subprocess.run(["bash", ROOT / "scripts" / "cluster_down.sh", folder], capture_output=True)


def _postgres_worker(url, study, trials, seed, trial_seconds, ready) -> None:
    SleepyProblem.sleep_seconds = trial_seconds
    # Built before the barrier: the set-up every worker pays once is kept out of the span.
    planner = _planner(storage=url, study=study, seed=seed)
    ready.wait()
    planner.search(new_trials=trials)


def _postgres_run(url: str, workers: int, args, repeat: int) -> dict:
    import optuna

    study = f"bench-{workers}-{repeat}"
    planner = _planner(storage=url, study=study)
    planner.open_study()
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(workers)
    processes = [
        context.Process(
            target=_postgres_worker,
            args=(url, study, args.per_worker, 1000 * repeat + i, args.trial_seconds, ready),
        )
        for i in range(workers)
    ]
    for p in processes:
        p.start()
    for p in processes:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"a PostgreSQL worker exited with {p.exitcode}")
    trials = optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    numbers = sorted(t.number for t in trials)
    return {
        "trials": len(trials),
        "span_s": (end - start).total_seconds(),
        "numbers_unique": numbers == list(range(len(trials))),
    }


def _summarize(runs: dict[int, list[dict]], trial_seconds: float) -> dict:
    out = {}
    base = None
    for workers, repeats in sorted(runs.items()):
        throughput = [r["trials"] / r["span_s"] for r in repeats]
        overhead = [workers * r["span_s"] / r["trials"] - trial_seconds for r in repeats]
        median = statistics.median(throughput)
        base = base or median
        out[str(workers)] = {
            "throughput_trials_per_s": median,
            "throughput_range": [min(throughput), max(throughput)],
            "scaling_efficiency": median / (workers * base),
            "overhead_ms_per_trial": 1000 * statistics.median(overhead),
            "overhead_ms_range": [1000 * min(overhead), 1000 * max(overhead)],
            "runs": repeats,
        }
    return out


def _print(name: str, summary: dict) -> None:
    for workers, s in summary.items():
        print(
            f"  {name}, {workers} worker(s): {s['throughput_trials_per_s']:.3f} trials/s "
            f"(range {s['throughput_range'][0]:.3f}–{s['throughput_range'][1]:.3f}), "
            f"efficiency {s['scaling_efficiency']:.2f}, overhead "
            f"{s['overhead_ms_per_trial']:.0f} ms/trial "
            f"({s['overhead_ms_range'][0]:.0f}–{s['overhead_ms_range'][1]:.0f})",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trial-seconds", type=float, default=2.0)
    parser.add_argument("--per-worker", type=int, default=6, help="trials per worker per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="1,2,3")
    parser.add_argument("--only", choices=["ray", "postgres"], help="one backend only")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    out = ROOT / "benchmarks" / "results" / "distributed.json"
    # --only updates its own section of an earlier run's file.
    result: dict = json.loads(out.read_text()) if args.only and out.exists() else {}
    result |= {
        "trial_seconds": args.trial_seconds,
        "per_worker": args.per_worker,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
    }
    if args.only in (None, "postgres"):
        print("PostgreSQL workers:", flush=True)
        runs: dict[int, list[dict]] = {w: [] for w in counts}
        with _running_postgres() as url:
            for repeat in range(args.repeats):
                for workers in counts:
                    runs[workers].append(_postgres_run(url, workers, args, repeat))
        result["postgres"] = _summarize(runs, args.trial_seconds)
        _print("postgres", result["postgres"])
    if args.only in (None, "ray"):
        print("Ray cluster:", flush=True)
        runs = {w: [] for w in counts}
        for repeat in range(args.repeats):
            for workers in counts:
                runs[workers].append(_ray_run(workers, args, repeat))
        result["ray"] = _summarize(runs, args.trial_seconds)
        _print("ray", result["ray"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
