"""A study resumes only the problem it was made for (planner.identity), a plan over its budget is
never written (Problem.recheck), and a model file is the same model for the latency records
whatever path names it (predictors.latency.training_sets.model_identity).

Each refusal is one line on stderr, exit 2, with the plan file of the earlier run unchanged."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch
from support.latency import known_records
from torch import nn

from planner.budgets import format_bytes_pair, format_ms_pair
from planner.cli import main
from predictors.latency import FlopsPredictor, load_predictor
from predictors.latency.sampling import random_plans
from search_spaces import discover
from search_spaces.model_spec import load_model
from search_spaces.space import SearchSpace

# A user's model file: the architecture in code, the trained weights beside it (mynet.pt), as
# a stranger writes it. HIDDEN is replaced to change the structure.
MYNET = """
from pathlib import Path

import torch
from torch import nn

HIDDEN = 64


def build():
    net = nn.Sequential(
        nn.Linear(16, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 4)
    )
    net.load_state_dict(torch.load(Path(__file__).with_name("mynet.pt")))
    return net.eval()
"""


def train(folder, *, seed: int, hidden: int = 64) -> None:
    """Write the model file and "trained" weights (a seed stands in for a training run)."""
    (folder / "mynet.py").write_text(MYNET.replace("HIDDEN = 64", f"HIDDEN = {hidden}"))
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 4)
    )
    torch.save(net.state_dict(), folder / "mynet.pt")


def write_data(path, *, seed: int) -> None:
    g = np.random.default_rng(seed)
    np.savez(path, x=g.normal(size=(64, 16)).astype(np.float32), y=g.integers(0, 4, 64))


def run(capsys, *argv):
    """`compplan ARGV`: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train(tmp_path, seed=0)
    return tmp_path


def search(capsys, *extra, out="plan.json", trials=20):
    argv = ["search", "--model", "mynet.py:build", "--input-shape", "1,16", "--size-budget", "x8"]
    argv += ["--storage", "sqlite:///studies.db", "--trials", trials, "--out", out, *extra]
    return run(capsys, *argv)


def refused(code: int, err: str) -> bool:
    return code == 2 and err.count("\n") == 1 and err.startswith("compplan: error: ")


def test_a_retrained_model_is_refused_and_fresh_starts_a_new_study(capsys, project):
    code, out, err = search(capsys, "--json")
    assert code == 0, err
    first = json.loads(out)["study"]
    before = (project / "plan.json").read_bytes()

    train(project, seed=1)  # the same architecture, new weights
    code, _, err = search(capsys)  # the identical command
    assert refused(code, err), err
    assert "weights" in err and "--study NAME" in err and "--fresh" in err
    assert (project / "plan.json").read_bytes() == before

    code, out, err = search(capsys, "--fresh", "--json")
    assert code == 0, err
    summary = json.loads(out)
    plan = json.loads((project / "plan.json").read_text())
    assert summary["study"].startswith(f"{first}-")  # a new study under the default name
    assert plan["provenance"]["study"] == summary["study"]
    # Within the budget by the current model's sizes, and the figures shown are the plan's.
    assert summary["written"]["size_bytes"] <= summary["budget"]["size_bytes"]
    assert plan["provenance"]["size_bytes"] == summary["written"]["size_bytes"]
    assert plan["provenance"]["trial"] == summary["best"]["number"]
    code, out, err = run(
        capsys, "size", "--model", "mynet.py:build", "--input-shape", "1,16", "--plan", "plan.json",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    written = summary["written"]["size_bytes"]
    assert json.loads(out)["size_bytes"] == pytest.approx(written, abs=1)

    # The same --fresh command resumes its own study.
    code, out, err = search(capsys, "--fresh", "--json", trials=25)
    assert code == 0, err
    assert json.loads(out)["trials"] == 25 and json.loads(out)["study"] == summary["study"]


def change_structure(project):
    train(project, seed=0, hidden=32)


def change_task_data(project):
    write_data(project / "data.npz", seed=1)


def change_predictor(project):
    (project / "latency.json").write_bytes((project / "latency-other.json").read_bytes())


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (change_structure, "model structure"),
        (change_task_data, "task data"),
        (change_predictor, "latency predictor"),
    ],
)
def test_a_changed_problem_is_refused_under_the_same_study(capsys, project, change, named):
    """(A runtime is no setting of a search yet: a predictor is fit for one, so a changed
    predictor stands for it.)"""
    write_data(project / "data.npz", seed=0)
    fit_predictors(project)
    extra = ["--study", "mine", "--data", "data.npz", "--latency-model", "latency.json"]
    code, _, err = search(capsys, *extra)
    assert code == 0, err
    before = (project / "plan.json").read_bytes()
    change(project)
    code, _, err = search(capsys, *extra)
    assert refused(code, err), err
    assert named in err and "study 'mine'" in err and "--study NAME" in err
    assert (project / "plan.json").read_bytes() == before


def fit_predictors(project) -> None:
    """Two predictors of the model, as if fit on two devices: latency.json, latency-other.json."""
    loaded = load_model("mynet.py:build", input_shape=(1, 16))
    graph = discover(loaded.module, loaded.example_inputs, model_name="mynet.py:build")
    plans = random_plans(SearchSpace(graph), 6, seed=0)
    graphs = {("mynet.py:build", "1x16"): graph}
    for name, phase in (("latency.json", 1.0), ("latency-other.json", 1.5)):
        records = known_records(
            graph, plans, model="mynet.py:build", input_shape="1x16", runtime="onnxruntime"
        )
        records["reference_ms"] *= phase
        FlopsPredictor().fit(records, graphs=graphs).save(project / name)


def test_a_plan_over_its_budget_is_never_written_even_from_an_edited_study(capsys, project):
    code, _, err = search(capsys, "--study", "edited")
    assert code == 0, err
    before = (project / "plan.json").read_bytes()
    # Someone with write access to the storage points every trial at each layer's largest
    # option (and drops repair's changes), leaving the recorded sizes as they were.
    with sqlite3.connect(project / "studies.db") as db:
        db.execute("UPDATE trial_params SET param_value = 0 WHERE param_name LIKE '%/option'")
        db.execute("UPDATE trial_user_attributes SET value_json = '{}' WHERE key = 'repaired'")
    code, _, err = search(capsys, "--study", "edited")  # no new trial: the study holds 20
    assert refused(code, err), err
    assert "over the size budget" in err and "no plan was written" in err
    sizes = [part for part in err.split() if part.replace(",", "").replace(".", "").isdigit()]
    assert len(set(sizes)) >= 2  # both figures, and they read differently
    assert (project / "plan.json").read_bytes() == before


def test_one_model_file_named_by_two_relative_paths_shares_one_latency_record(
    capsys, project, monkeypatch
):
    fit_predictors(project)  # records name it "mynet.py:build", from its own folder
    predictor = load_predictor(project / "latency.json")
    monkeypatch.chdir(project.parent)
    spec = f"{project.name}/mynet.py:build"
    loaded = load_model(spec, input_shape=(1, 16))
    graph = discover(loaded.module, loaded.example_inputs, model_name=spec)
    reference, source = predictor.reference_ms(graph)
    assert source == "measured"
    assert reference == pytest.approx(next(iter(predictor.references.values())))
    code, out, err = run(
        capsys, "predict-latency", "--predictor", project / "latency.json", "--model", spec,
        "--input-shape", "1,16", "--preset", "bits:8",
    )  # fmt: skip
    assert code == 0, err
    assert "(measured)" in out and "extrapolated" not in err


def test_a_worker_checks_the_same_identity(capsys, project):
    code, _, err = search(capsys, "--study", "shared", trials=0)
    assert code == 0, err
    worker = ["worker", "--storage", "sqlite:///studies.db", "--study", "shared", "--trust-specs"]
    code, _, err = run(capsys, *worker, "--trials", 3)
    assert code == 0, err
    train(project, seed=1)  # the model file changed where this worker runs
    code, _, err = run(capsys, *worker, "--trials", 3)
    assert refused(code, err), err
    assert "weights" in err and "worker" in err


def test_figures_in_a_refusal_read_differently():
    # "size budget 2.0 KiB is below ... 2.0 KiB" told the reader nothing.
    assert format_bytes_pair(2050, 2060) == ("2,050 B", "2,060 B")
    assert format_bytes_pair(2050.2, 2050.4) == ("2,050.2 B", "2,050.4 B")
    assert format_bytes_pair(2 * 2**20, 3 * 2**20) == ("2.000 MiB", "3.000 MiB")
    assert format_bytes_pair(2050, 2050) == ("2.0 KiB", "2.0 KiB")
    first, second = format_ms_pair(1.23451, 1.23456)
    assert first != second and first.endswith(" ms")
