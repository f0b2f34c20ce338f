"""`compplan search` as a user runs it: a plan within the budget, a table, resuming, and one-line
errors for bad budgets and storage."""

from __future__ import annotations

import json

import pytest

from planner.cli import main
from predictors.size import SizePredictor
from search_spaces import Plan, discover
from search_spaces.model_spec import load_model


def _search(tmp_path, *extra: str) -> list[str]:
    return [
        "search",
        "--model",
        "zoo:digits",
        "--storage",
        f"sqlite:///{tmp_path / 'studies.db'}",
        "--out",
        str(tmp_path / "plan.json"),
        *extra,
    ]


def test_search_writes_a_plan_within_the_budget_and_resumes(tmp_path, capsys):
    argv = _search(tmp_path, "--size-budget", "x30", "--trials", "15")
    assert (
        main(
            [
                *argv,
                "--trials-csv",
                str(tmp_path / "trials.csv"),
                "--plot",
                str(tmp_path / "front.png"),
            ]
        )
        == 0
    )
    assert (tmp_path / "front.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "blocks.1.conv1" in out and "best of 15 trials" in out and "sqlite:///" in out
    loaded = load_model("zoo:digits")
    graph = discover(loaded.module, loaded.example_inputs, model_name="zoo:digits")
    plan = Plan.load(tmp_path / "plan.json")
    assert SizePredictor(graph).predict([plan])[0] <= graph.baseline_bits / 8 / 30
    assert len((tmp_path / "trials.csv").read_text().splitlines()) == 16
    assert main([*_search(tmp_path, "--size-budget", "x30", "--trials", "20"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (
        summary["trials"] == 20 and summary["best"]["size_bytes"] <= summary["budget"]["size_bytes"]
    )
    assert main(["validate", "--model", "zoo:digits", "--plan", str(tmp_path / "plan.json")]) == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--size-budget", "12 parsecs"], "size budget '12 parsecs'"),
        (["--size-budget", "10"], "below the smallest plan this space reaches"),
        (["--latency-budget", "5"], "needs a latency predictor"),
        ([], "give at least one budget"),
        (["--size-budget", "x25", "--storage", "mysql+nodriver://x/y"], "cannot open storage"),
        (["--size-budget", "x25", "--trials", "-1"], "--trials must be at least 0"),
        (["--size-budget", "x25", "--candidates", "0"], "--candidates must be at least 1"),
        (["--size-budget", "x25", "--plot", "front.gif"], "give a .html"),
        (["--size-budget", "x25", "--tune-lr", "3"], "--tune-lr needs --objective real"),
        (["--size-budget", "x25", "--timeout", "-1"], "--timeout must be a positive number"),
        (["--latency-budget", "x0.5"], "needs a latency predictor (--latency-model FILE)"),
        (["--latency-budget", "fast"], "latency budget 'fast'"),
        (["--size-budget", "x25", "--data", "/no/such.npz"], "--data /no/such.npz: no such file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, message):
    argv = _search(tmp_path, *extra)
    if "--storage" in extra:  # the given storage replaces the default one
        i = argv.index("--storage")
        del argv[i : i + 2]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("compplan: error:") and message in err[0]


def test_the_real_objective_fine_tunes_the_best_candidates(tmp_path, capsys):
    argv = _search(tmp_path, "--size-budget", "x45", "--trials", "30", "--objective", "real")
    assert main([*argv, "--candidates", "2", "--epochs", "1", "--tune-lr", "4", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    candidates = summary["real"]["candidates"]
    # The 2 best by proxy, then the balanced plans that differ from them (45×: they do).
    assert all(c.startswith("proxy trial") for c in candidates[:2])
    assert all(c.startswith("balanced") for c in candidates[2:])
    assert "balanced ×2" in candidates
    assert summary["real"]["winner"] in candidates
    lr = summary["real"]["learning_rates"]
    assert lr["score"] >= lr["baseline_score"]
    assert 0.5 < summary["real"]["validation_score"] <= 1.0
    plan = Plan.load(tmp_path / "plan.json")
    assert plan.provenance["validation_accuracy"] == summary["real"]["validation_score"]
    assert plan.provenance["lr_validation_accuracy"] == lr["score"]
    assert {lp.lr_mult for lp in plan.layers.values()} <= {0.0, 0.01, 0.1, 1.0}
    assert summary["real"]["size_bytes"] <= summary["budget"]["size_bytes"]


def test_the_real_objective_needs_task_data(tmp_path, capsys):
    argv = _search(tmp_path, "--size-budget", "x25", "--objective", "real")
    argv[argv.index("zoo:digits")] = "zoo:resnet18"
    assert main(argv) == 2
    assert "needs data" in capsys.readouterr().err


def test_a_real_objective_without_data_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """A user's own model without a task: one line, exit 2, no trial run and no database made."""
    (tmp_path / "mine.py").write_text(
        "from torch import nn\n\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(),"
        " nn.Linear(16 * 30 * 30, 10))\n"
    )
    monkeypatch.chdir(tmp_path)
    argv = ["search", "--model", "mine.py:build", "--input-shape", "1,3,32,32"]
    code = main([*argv, "--size-budget", "x10", "--objective", "real", "--out", "plan.json"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the real objective needs data" in err[0] and "--data FILE" in err[0]
    assert not list(tmp_path.glob("*.db")) and not (tmp_path / "plan.json").exists()
