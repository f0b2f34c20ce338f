"""Optuna-native workers: `compplan worker` processes sharing a study on a real PostgreSQL server
that these tests start themselves, and storage URLs that cannot work failing fast."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import optuna
import pytest

from planner.cli import main


def _compplan(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "planner.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
def test_three_workers_on_postgres_run_sixty_trials_none_lost(postgres_url):
    created = main(
        [
            "search",
            "--model",
            "zoo:digits",
            "--size-budget",
            "x25",
            "--storage",
            postgres_url,
            "--study",
            "shared",
            "--trials",
            "0",
        ]
    )
    assert created == 0
    workers = [
        _compplan(
            "worker", "--storage", postgres_url, "--study", "shared", "--trials", "20", "--json"
        )
        for _ in range(3)
    ]
    summaries = []
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err
        summaries.append(json.loads(out))
    assert [s["trials_here"] for s in summaries] == [20, 20, 20]
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 60
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(60))
    by_worker: dict[str, int] = {}
    for t in trials:
        by_worker[t.user_attrs["worker"]] = by_worker.get(t.user_attrs["worker"], 0) + 1
    assert sorted(by_worker.values()) == [20, 20, 20]
    assert set(by_worker) == {s["worker"] for s in summaries}
    # Each worker saw the others' trials: the last one to finish reports the whole study.
    assert max(s["trials_in_study"] for s in summaries) == 60


def test_a_worker_needs_an_existing_study(postgres_url, capsys):
    code = main(["worker", "--storage", postgres_url, "--study", "no-such-study"])
    assert code == 2
    assert "no study 'no-such-study'" in capsys.readouterr().err


@pytest.fixture
def silent_port():
    """A loopback port that accepts connections and never answers (a hung server): only the
    connect timeout can end a client's wait there."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


@pytest.mark.parametrize(
    "url, says",
    [
        ("postgresql+psycopg2://postgres@127.0.0.1:1/postgres", "cannot open storage"),
        ("postgresql+psycopg2://postgres@127.0.0.1:{silent}/postgres", "cannot open storage"),
        ("postgres://localhost/db", "cannot open storage"),
        ("localhost:5432/db", "is not a URL"),
    ],
)
def test_a_wrong_database_url_fails_within_seconds(url, says, capsys, silent_port):
    started = time.monotonic()
    code = main(["worker", "--storage", url.format(silent=silent_port), "--study", "s"])
    assert code == 2
    assert says in capsys.readouterr().err
    assert time.monotonic() - started < 15


def _flops_predictor(path):
    """A small fitted-looking FLOPs predictor file (1 ms per 10 MMACs)."""
    from predictors.latency import predictor_from_document

    document = {
        "format": "compplan-latency-predictor",
        "version": 2,
        "kind": "flops",
        "fingerprint": {"device": "cpu", "cpu": "test", "threads": 1, "runtime": "onnxruntime"},
        "state": {"ms_per_mac": 1e-7, "offset_ms": 0.5},
    }
    return predictor_from_document(document).save(path)


def test_a_worker_rebuilds_the_search_from_the_studys_config_alone(tmp_path, capsys):
    """The study stores the whole SearchConfig, latency predictor included: the worker needs
    neither the predictor file nor any of the creator's flags."""
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    predictor = _flops_predictor(tmp_path / "latency.json")
    argv = ["search", "--model", "zoo:digits", "--size-budget", "x25", "--latency-model"]
    argv += [str(predictor), "--latency-budget", "10", "--protect-ends", "no", "--seed", "3"]
    created = main([*argv, "--storage", storage, "--study", "alone", "--trials", "0"])
    assert created == 0
    predictor.unlink()
    capsys.readouterr()
    joining = ["worker", "--storage", storage, "--study", "alone"]
    assert main([*joining, "--trials", "1", "--runtime", "torch"]) == 2  # refused, no trial run
    assert "prices latency on onnxruntime, not torch" in capsys.readouterr().err
    assert main([*joining, "--trials", "6", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runtime"] == "onnxruntime"  # rebuilt from it
    study = optuna.load_study(study_name="alone", storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 6
    assert all(t.user_attrs["latency_ms"] > 0.5 for t in trials)  # the embedded predictor ran
    config = study.user_attrs["compplan_config"]
    assert config["budget"]["latency_ms"] == 10 and config["protect_ends"] is False
    assert config["runtime"] == "onnxruntime"  # the runtime recorded in the study
    # protect_ends=no reached the worker: the first conv is searched, not kept at 32 bits.
    assert any(key.startswith("stem.0/") for key in trials[0].params)


def test_a_study_of_an_older_compplan_is_refused_with_how_to_recreate_it(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'old.db'}"
    study = optuna.create_study(storage=storage, study_name="old")
    study.set_user_attr("compplan", {"model": "zoo:digits", "budget": {"size_bytes": 1e5}})
    assert main(["worker", "--storage", storage, "--study", "old"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "created by an older compplan" in err[0] and "--study old --trials 0` once" in err[0]
