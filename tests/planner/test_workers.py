"""Optuna-native workers: `compplan worker` processes sharing a study on a real PostgreSQL server
that these tests start themselves, and storage URLs that cannot work failing fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import optuna
import pytest
from support.postgres import running_postgres

from planner.cli import main


@pytest.fixture(scope="module")
def postgres_url():
    with running_postgres() as url:
        yield url


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


@pytest.mark.parametrize(
    "url, says",
    [
        ("postgresql+psycopg2://postgres@127.0.0.1:1/postgres", "cannot open storage"),
        ("postgresql+psycopg2://postgres@10.255.255.1:5432/postgres", "cannot open storage"),
        ("postgres://localhost/db", "cannot open storage"),
        ("localhost:5432/db", "is not a URL"),
    ],
)
def test_a_wrong_database_url_fails_within_seconds(url, says, capsys):
    started = time.monotonic()
    code = main(["worker", "--storage", url, "--study", "s"])
    assert code == 2
    assert says in capsys.readouterr().err
    assert time.monotonic() - started < 15
