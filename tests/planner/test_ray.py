"""The Ray backend on a real two-node Ray cluster on this machine (scripts/cluster_up.sh): trials
land on both nodes, a node killed mid-search costs no finished trial, and a wrong address fails
fast. The searches run as `compplan` processes, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from planner.cli import main
from predictors.size import SizePredictor
from search_spaces import Plan, discover
from search_spaces.model_spec import load_model

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A head and one worker node (1 CPU each); yields (address, env, folder)."""
    folder = Path(tempfile.mkdtemp(prefix="compplan-cluster-"))  # short: Ray's socket paths
    port = _free_port()
    env = {**os.environ, "PORT": str(port), "RAY": str(Path(sys.executable).parent / "ray")}
    try:
        subprocess.run(
            ["bash", ROOT / "scripts" / "cluster_up.sh", "1", folder],
            env=env,
            check=True,
            capture_output=True,
            timeout=180,
        )
        for line in (folder / "env").read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value
        yield f"127.0.0.1:{port}", env, folder
    finally:
        # A test's cluster holds nothing to save: 5 s for SIGTERM, not a user's 20.
        subprocess.run(["bash", ROOT / "scripts" / "cluster_down.sh", folder, "5"], timeout=120)


def _search(env, folder, *args, trials=8, model="zoo:digits"):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "planner.cli",
            "search",
            "--backend",
            "ray",
            "--model",
            model,
            *(["--size-budget", "x25"] if "--size-budget" not in args else []),
            "--trials",
            str(trials),
            "--ray-results",
            str(folder / "results"),
            "--json",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "RAY_TMPDIR": str(folder / "driver")},
        cwd=folder,
    )


def _real_search(env, folder, address, *, study, epochs, out, trials):
    """A real-objective search on the cluster at `address`, writing its plan to `out`."""
    return _search(
        env,
        folder,
        "--address",
        address,
        "--study",
        study,
        "--objective",
        "real",
        "--epochs",
        str(epochs),
        "--out",
        str(out),
        trials=trials,
    )


@pytest.mark.slow
def test_a_search_on_a_two_node_cluster_uses_both_nodes(cluster):
    address, env, folder = cluster
    out = folder / "plan.json"
    # Fine-tuning trials (seconds each) keep both one-CPU nodes busy at once.
    search = _real_search(env, folder, address, study="both", epochs=1, out=out, trials=4)
    stdout, stderr = search.communicate(timeout=600)
    assert search.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["trials"] == 4
    assert len(summary["nodes"]) == 2
    loaded = load_model("zoo:digits")
    graph = discover(loaded.module, loaded.example_inputs, model_name="zoo:digits")
    size = SizePredictor(graph).predict([Plan.load(out)])[0]
    assert size <= graph.baseline_bits / 8 / 25
    assert summary["best"]["size_bytes"] == pytest.approx(size)


@pytest.mark.slow
def test_a_worker_node_killed_mid_search_loses_no_finished_trial(cluster):
    address, env, folder = cluster
    out = folder / "plan-killed.json"
    search = _real_search(env, folder, address, study="killed", epochs=3, out=out, trials=6)
    # Once two trials have reported (Tune syncs a folder per trial), the worker node dies with
    # all its processes: its process group, by the id cluster_up.sh recorded.
    experiment = folder / "results" / "killed"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(experiment.glob("trial_*"))) < 2:
        time.sleep(0.2)
    if search.poll() is not None:
        pytest.fail(f"the search ended before the node could be killed: {search.stderr.read()}")
    os.killpg(int((folder / "worker1.pid").read_text()), signal.SIGKILL)
    stdout, stderr = search.communicate(timeout=600)
    assert search.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["trials"] == 6  # every trial is there: retried on the head, or marked failed
    assert summary["failed_trials"] < 6
    assert out.exists()


def test_a_wrong_ray_address_fails_within_seconds(tmp_path, capsys):
    started = time.monotonic()
    code = main(
        [
            "search",
            "--backend",
            "ray",
            "--address",
            "127.0.0.1:1",
            "--model",
            "zoo:digits",
            "--size-budget",
            "x25",
            "--out",
            str(tmp_path / "plan.json"),
        ]
    )
    assert code == 2
    assert "no Ray head answers at 127.0.0.1:1" in capsys.readouterr().err
    assert time.monotonic() - started < 15


def _two_real_trials(cluster, name: str, *args, model: str = "zoo:digits"):
    """Two real-objective trials of 1 epoch on the cluster; (stdout, the finished feasible
    trials, the work folder)."""
    address, env, folder = cluster
    work = folder / name
    work.mkdir(exist_ok=True)
    csv = work / "trials.csv"
    search = _search(
        env,
        work,
        "--address",
        address,
        "--objective",
        "real",
        "--epochs",
        "1",
        "--out",
        str(work / "plan.json"),
        "--trials-csv",
        str(csv),
        *args,
        trials=2,
        model=model,
    )
    stdout, stderr = search.communicate(timeout=600)
    assert search.returncode == 0, stderr
    trials = pd.read_csv(csv)
    done = trials[(trials["state"] == "COMPLETE") & trials["feasible"]]
    assert len(done) == 2 and (done["epoch"] == 1).all()
    return stdout, done, work


@pytest.mark.slow
def test_real_trials_fine_tune_every_epoch_asked_and_leave_no_sqlite_file(cluster):
    """ASHA's clock is the epoch: the report made right after applying must not use one up
    (it did: with --epochs 1, trials were scored with no fine-tuning at all)."""
    stdout, done, work = _two_real_trials(
        cluster, "epochs", "--study", "epochs", "--size-budget", "x40"
    )
    # Each trial scored its own proposal (OptunaSearch nests the "<layer>/option" names; read
    # flat they were lost, and every trial decoded the same default plan).
    params = done.filter(like="params_")
    assert params.notna().all().all() and len(params.drop_duplicates()) == 2
    # Fine-tuned, not scored as applied: the scores moved, and the plan that applied worst
    # gained (a plan the proxy already made good may lose an example or two to one epoch).
    assert (done["accuracy"] != done["applied_accuracy"]).any(), done
    worst = done["applied_accuracy"].idxmin()
    assert done.loc[worst, "accuracy"] > done.loc[worst, "applied_accuracy"], done
    assert json.loads(stdout)["best"]["validation_accuracy"] == pytest.approx(
        done["accuracy"].max()
    )
    assert not list(work.glob("*.db")), "the Ray backend wrote an Optuna database"


@pytest.mark.slow
def test_real_trials_on_the_users_model_and_data(cluster):
    """A model and labelled data in the user's files: each Ray trial fine-tunes and scores on
    that data (the task travels with the trial), and the experiment records the task's spec."""
    from support.user_project import write_project

    project = write_project(cluster[2] / "users")
    data, model = str(project["data"]), f"{project['net']}:build"
    stdout, done, work = _two_real_trials(
        cluster, "users", "--data", data, "--size-budget", "x6", model=model
    )
    # Scored on the blobs' validation split: a 4-class accuracy, far above chance for 4 bits.
    assert ((done["accuracy"] > 0.5) & (done["accuracy"] <= 1)).all(), done
    study = json.loads(stdout)["study"]
    marker = json.loads((work / "results" / study / "compplan-config.json").read_text())
    assert marker["task"] == f"data:{data}"


@pytest.mark.slow
def test_another_searchs_experiment_is_refused_not_restored(cluster, capsys):
    address, env, folder = cluster
    work = folder / "restore"
    work.mkdir()
    common = ["--address", address, "--study", "same", "--trials", "2", "--json"]
    first = _search(env, work, *common, "--out", str(work / "a.json"), trials=2)
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    # The same search again resumes its experiment (Tuner.restore), trials kept.
    same = _search(env, work, *common, "--out", str(work / "a.json"), trials=2)
    stdout, stderr = same.communicate(timeout=600)
    assert same.returncode == 0, stderr
    assert json.loads(stdout)["trials"] == 2
    again = _search(
        env, work, *common, "--objective", "real", "--out", str(work / "b.json"), trials=2
    )
    _, stderr = again.communicate(timeout=600)
    assert again.returncode == 2
    lines = stderr.strip().splitlines()
    assert "was made by a proxy search" in lines[-1] and "give another --study" in lines[-1]


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--pareto"], "--pareto is for --backend optuna"),
        (["--objective", "real", "--tune-lr", "4"], "--tune-lr is for --backend optuna"),
        (["--objective", "real", "--candidates", "3"], "--candidates is for --backend optuna"),
    ],
)
def test_options_the_ray_backend_cannot_honour_are_refused(tmp_path, capsys, extra, says):
    argv = ["search", "--backend", "ray", "--model", "zoo:digits", "--size-budget", "x25"]
    assert main([*argv, "--out", str(tmp_path / "plan.json"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]
