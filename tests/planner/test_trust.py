"""The trust rule: a model spec read from data (a records file, a study) names code, and that code
runs only when the user opts in with --trust-specs. The module here writes a marker file when it
is imported, so the test sees whether it ran at all."""

from __future__ import annotations

import pytest
import torch
from support.latency import known_records
from torch import nn

from planner.cli import main
from predictors.latency import random_plans
from search_spaces import SearchSpace, discover

MARKING_MODEL = """
from pathlib import Path

import torch
from torch import nn

Path(__file__).with_name("marker.txt").write_text("this module ran")


def build():
    torch.manual_seed(0)  # the same weights at every build: a worker joins the same model
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
"""


def _same_structure() -> nn.Module:
    """What MARKING_MODEL builds, made here so that the test itself never imports it."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.fixture
def marking_spec(tmp_path):
    (tmp_path / "marking.py").write_text(MARKING_MODEL)
    return f"{tmp_path / 'marking.py'}:build", tmp_path / "marker.txt"


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_a_records_file_runs_the_code_it_names_only_with_trust(marking_spec, tmp_path, capsys):
    spec, marker = marking_spec
    graph = discover(_same_structure(), torch.randn(1, 1, 8, 8), model_name=spec)
    records = known_records(graph, random_plans(SearchSpace(graph), 12), model=spec)
    path = tmp_path / "records.csv"
    records.to_csv(path, index=False)
    fit = ["fit-latency", str(path), "--out", str(tmp_path / "p.json"), "--kind", "flops"]
    fit += ["--runtime", "torch"]  # the records' (made-up, torch) runtime
    code, err = _run(capsys, *fit)
    assert code == 2 and err.count("\n") == 1 and "--trust-specs" in err, err
    assert not marker.exists()
    code, err = _run(capsys, *fit, "--trust-specs")
    assert code == 0, err
    assert marker.exists()


def test_a_study_runs_the_code_it_names_only_with_trust(marking_spec, tmp_path, capsys):
    spec, marker = marking_spec
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    model = ["--model", spec, "--input-shape", "1x1x8x8"]
    created = ["search", *model, "--size-budget", "x4", "--storage", storage, "--study", "s"]
    code, err = _run(capsys, *created, "--trials", "0")
    assert code == 0, err
    marker.unlink()  # the creator typed the spec: it ran, as it should
    worker = ["worker", "--storage", storage, "--study", "s", "--trials", "2"]
    code, err = _run(capsys, *worker)
    assert code == 2 and err.count("\n") == 1 and "--trust-specs" in err, err
    assert not marker.exists()
    code, err = _run(capsys, *worker, "--trust-specs")
    assert code == 0, err
    assert marker.exists()
