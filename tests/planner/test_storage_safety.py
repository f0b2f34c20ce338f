"""Storages handled with care: a database password never leaves the process, a worker never
creates a database, and processes sharing a study stop at exactly the trials asked. On real
storages: SQLite files, a journal, and the tests' own PostgreSQL server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pytest

from planner.cli import main
from planner.storage import display_url

SECRET = "S3cretPW"
DIGITS = ["--model", "zoo:digits", "--size-budget", "x25"]


def _with_password(url: str) -> str:
    """The server's URL with a password (its trust authentication accepts any)."""
    return url.replace("postgres@", f"postgres:{SECRET}@", 1)


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql+psycopg2://u:S3cretPW@h:5432/db", "postgresql+psycopg2://u:***@h:5432/db"),
        ("mysql://u:p@ss:w@h/db", "mysql://u:***@h/db"),
        ("postgresql://h/db?user=u&password=S3cretPW", "postgresql://h/db?user=u&password=***"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("sqlite:///studies.db", "sqlite:///studies.db"),
        ("journal:studies.log", "journal:studies.log"),
    ],
)
def test_display_url_masks_the_password_only(url, shown):
    assert display_url(url) == shown


def test_a_password_is_in_no_output_summary_plan_or_study(postgres_url, tmp_path, capsys):
    url = _with_password(postgres_url)
    plan = tmp_path / "plan.json"
    search = ["search", *DIGITS, "--storage", url, "--study", "pw", "--trials", "6"]
    code, created = _run(capsys, *search[:-1], "0")
    assert code == 0 and "compplan worker --storage" in created
    code, summary = _run(capsys, *search, "--out", str(plan), "--json")
    assert code == 0, summary
    worker = ["worker", "--storage", url, "--study", "pw", "--trials", "2", "--seed", "1"]
    code, joined = _run(capsys, *worker, "--json")
    assert code == 0, joined
    code, refused = _run(
        capsys,
        "search",
        *DIGITS,
        "--storage",
        _with_password("postgresql+psycopg2://postgres@127.0.0.1:1/postgres"),
        "--trials",
        "0",
    )
    assert code == 2 and "cannot open storage" in refused
    study = optuna.load_study(study_name="pw", storage=postgres_url)
    stored = json.dumps(
        [study.user_attrs, *(t.user_attrs for t in study.get_trials(deepcopy=False))]
    )
    everything = {
        "created": created,
        "summary": summary,
        "worker": joined,
        "refused": refused,
        "plan": plan.read_text(),
        "study": stored,
    }
    leaks = [where for where, text in everything.items() if SECRET in text]
    assert leaks == []
    assert "postgres:***@" in json.loads(summary)["storage"]  # masked, not dropped
    assert "postgres:***@" in json.loads(plan.read_text())["provenance"]["storage"]


@pytest.mark.parametrize("url", ["sqlite:///{dir}/misspelt.db", "journal:{dir}/misspelt.log"])
def test_a_worker_never_creates_a_database(url, tmp_path, capsys):
    url = url.format(dir=tmp_path)
    code, err = _run(capsys, "worker", "--storage", url, "--study", "s", "--trials", "1")
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err, err
    assert list(tmp_path.iterdir()) == []


def _search_process(storage: str, study: str, trials: int, out) -> subprocess.Popen:
    argv = ["search", *DIGITS, "--storage", storage, "--study", study, "--trials", str(trials)]
    return subprocess.Popen(
        [sys.executable, "-m", "planner.cli", *argv, "--out", str(out), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
@pytest.mark.parametrize("where", ["sqlite", "journal", "postgres"])
def test_two_searches_sharing_a_study_end_with_exactly_the_trials_asked(where, tmp_path, request):
    storage = {
        "sqlite": f"sqlite:///{tmp_path}/studies.db",
        "journal": f"journal:{tmp_path}/studies.log",
        "postgres": None,
    }[where] or request.getfixturevalue("postgres_url")
    trials = 150  # long enough that the two overlap, the only case where one could overshoot
    processes = [
        _search_process(storage, f"two-{where}", trials, tmp_path / f"plan{i}.json")
        for i in range(2)
    ]
    for process in processes:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    stored = optuna.load_study(study_name=f"two-{where}", storage=_open(storage))
    finished = stored.get_trials(deepcopy=False)
    assert len(finished) == trials
    workers = {t.user_attrs["worker"] for t in finished}
    assert len(workers) == 2  # both ran trials: they did overlap
    if where == "journal":  # one create-study record, however the two raced
        lines = (tmp_path / "studies.log").read_text().splitlines()
        assert sum(json.loads(line)["op_code"] == 0 for line in lines) == 1


def _open(url: str):
    from planner.storage import open_storage

    return open_storage(url, create=False)


def _open_at(url: str, start: float) -> None:
    import time

    from planner.storage import open_storage

    time.sleep(max(0.0, start - time.time()))
    open_storage(url)


def test_processes_opening_a_new_sqlite_file_together_all_succeed(tmp_path):
    # Workers started at once on a fresh file: each creates Optuna's tables and stamps their
    # version, and without the file lock the stamps collide (UNIQUE constraint failed).
    import multiprocessing
    import time

    context = multiprocessing.get_context("fork")
    failures = []
    for round_ in range(3):
        url = f"sqlite:///{tmp_path}/fresh{round_}.db"
        start = time.time() + 1.0  # every process started and waiting when the clock strikes
        processes = [context.Process(target=_open_at, args=(url, start)) for _ in range(6)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=120)
        failures += [process.exitcode for process in processes if process.exitcode != 0]
    assert not failures, failures


def _foreign_database(path) -> bytes:
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        db.execute("INSERT INTO invoices (total) VALUES (12.5)")
    db.close()
    return path.read_bytes()


def test_another_programs_sqlite_file_is_refused_and_left_unchanged(tmp_path, capsys):
    from planner.storage import open_storage

    path = tmp_path / "app.db"
    before = _foreign_database(path)
    search = ["search", *DIGITS, "--trials", "2", "--storage", f"sqlite:///{path}"]
    code, err = _run(capsys, *search, "--out", str(tmp_path / "plan.json"))
    assert code == 2 and err.count("\n") == 1, err
    assert "invoices" in err and "--storage-adopt" in err
    assert path.read_bytes() == before and not (tmp_path / "plan.json").exists()
    with pytest.raises(ValueError, match="another program's SQLite database"):
        open_storage(f"sqlite:///{path}", create=False)  # a worker: refused the same way
    assert path.read_bytes() == before
    code, err = _run(capsys, *search, "--storage-adopt", "--out", str(tmp_path / "plan.json"))
    assert code == 0, err
    import sqlite3

    with sqlite3.connect(path) as db:  # the program's table is still there, with its row
        assert db.execute("SELECT total FROM invoices").fetchall() == [(12.5,)]
    db.close()


def test_a_storage_that_cannot_be_made_leaves_no_file(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    script = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16)); "
        "from planner.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    for url, file in (("sqlite:///full/s.db", "s.db"), ("journal:full/j.log", "j.log")):
        argv = ["search", *DIGITS, "--trials", "2", "--storage", url, "--out", "full/plan.json"]
        done = subprocess.run(
            [sys.executable, "-c", script, *argv],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert file in done.stderr  # the error names the file
        assert os.listdir(tmp_path / "full") == []
