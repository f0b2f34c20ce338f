"""The user's own model, data and metric through the CLI, as a stranger would run them: a model
and a Task in files of their own (--task), labelled arrays (--data), and a token-id transformer
with inputs only (--inputs); and every kind of bad data ending in one line, exit 2, before any
slow work."""

from __future__ import annotations

import json
import logging
import re

import optuna
import pytest
from support.user_project import write_project

from planner.cli import main


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return write_project(tmp_path_factory.mktemp("project"))


def run(capsys, *argv):
    """`compplan ARGV`: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def bits4(project, tmp_path_factory):
    path = tmp_path_factory.mktemp("plans") / "bits4.json"
    argv = ["preset", "--model", f"{project['net']}:build", "--inputs", project["data"]]
    assert main([str(a) for a in [*argv, "--preset", "bits:4", "--out", path]]) == 0
    return path


@pytest.mark.slow
def test_a_task_of_the_users_file_through_apply_and_eval(capsys, project, bits4, tmp_path):
    model, task = f"{project['net']}:build", f"{project['net']}:make_task"
    out = tmp_path / "m.cpz"
    code, stdout, err = run(
        capsys, "apply", "--model", model, "--task", task, "--plan", bits4, "--out", out,
        "--epochs", "2", "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(stdout)
    assert result["task"] == task and result["metric"] == "accuracy" and result["data"] == "task"
    assert 0.5 < result["score_before"] <= 1 and result["score_after"] > 0.5
    assert result["best_epoch"] in (0, 1, 2) and result["distill"] == "kl"

    # The file names code (its model and task specs): eval runs it only when trusted.
    code, _, err = run(capsys, "eval", out)
    assert code == 2 and err.count("\n") == 1 and "--trust-specs" in err
    code, stdout, err = run(capsys, "eval", out, "--trust-specs", "--json")
    assert code == 0, err
    scored = json.loads(stdout)
    assert scored["task"] == task and scored["score"] == pytest.approx(result["score_after"])
    # Given on the command line, the specs are the user's own: no trust flag needed.
    code, stdout, err = run(capsys, "eval", out, "--model", model, "--task", task, "--json")
    assert code == 0, err
    assert json.loads(stdout)["score"] == pytest.approx(result["score_after"])


@pytest.mark.slow
def test_labelled_data_through_apply_and_eval(capsys, project, bits4, tmp_path):
    model, out = f"{project['net']}:build", tmp_path / "d.cpz"
    code, stdout, err = run(
        capsys, "apply", "--model", model, "--data", project["data"], "--plan", bits4,
        "--out", out, "--epochs", "2", "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(stdout)
    assert result["task"] == f"data:{project['data']}" and result["metric"] == "accuracy"
    assert result["score_before"] > 0.8  # the blobs are separable; the model learnt them
    # Kept by validation accuracy: never below right after applying, here not far below before.
    assert result["score_after"] >= result["score_before"] - 0.05
    code, stdout, err = run(capsys, "eval", out, "--model", model, "--json")
    assert code == 0, err
    assert json.loads(stdout)["score"] == pytest.approx(result["score_after"])


@pytest.mark.slow
@pytest.mark.parametrize("source", ["task", "data"])
def test_a_real_search_on_the_users_task(capsys, project, tmp_path, source):
    model = f"{project['net']}:build"
    task = f"{project['net']}:make_task"
    given = ["--task", task] if source == "task" else ["--data", project["data"]]
    storage = f"sqlite:///{tmp_path / 's.db'}"
    code, stdout, err = run(
        capsys, "search", "--model", model, *given, "--size-budget", "x6", "--trials", "20",
        "--objective", "real", "--candidates", "2", "--epochs", "1", "--storage", storage,
        "--study", "mine", "--out", tmp_path / "plan.json", "--json",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["real"]["metric"] == "accuracy"
    assert 0.3 < summary["real"]["validation_score"] <= 1
    config = optuna.load_study(study_name="mine", storage=storage).user_attrs["compplan_config"]
    assert config["task"] == (task if source == "task" else f"data:{project['data']}")


@pytest.mark.slow
def test_a_token_id_transformer_through_every_command(capsys, project, tmp_path):
    model, ids = f"{project['encoder']}:build", project["ids"]
    code, stdout, err = run(capsys, "inspect", "--model", model, "--inputs", ids, "--json")
    assert code == 0, err
    inventory = json.loads(stdout)
    assert any(layer["name"] == "proj" for layer in inventory["layers"])

    plan = tmp_path / "plan.json"
    code, stdout, err = run(
        capsys, "search", "--model", model, "--inputs", ids, "--size-budget", "x1.4",
        "--trials", "15", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--out", plan, "--json",
    )  # fmt: skip
    assert code == 0, err
    code, stdout, err = run(capsys, "size", "--model", model, "--inputs", ids, "--plan", plan)
    assert code == 0, err
    # Within the budget: at least 1.4× (the embedding now compresses too, so often more).
    ratio = float(re.search(r"compression ([0-9.]+)×", stdout).group(1))
    assert ratio >= 1.4, stdout
    # Latency: timed on the user's token ids (random floats would not even run).
    code, stdout, err = run(
        capsys, "measure-latency", "--model", model, "--inputs", ids, "--plan", plan, "--json"
    )
    assert code == 0 and json.loads(stdout)["latency_ms"] > 0, err
    code, stdout, err = run(
        capsys, "profile", "--model", model, "--inputs", ids, "--samples", "3", "--no-layers",
        "--no-structured", "--blocks", "4", "--rounds", "1", "--min-time-ms", "0",
        "--out", tmp_path / "r.parquet",
        "--json",
    )  # fmt: skip
    assert code == 0 and json.loads(stdout)["plans"] == 3, err

    out = tmp_path / "enc.cpz"
    code, stdout, err = run(
        capsys, "apply", "--model", model, "--inputs", ids, "--plan", plan, "--out", out,
        "--epochs", "1", "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(stdout)
    # Hidden states: cosine similarity to the original, distilled with the cosine loss.
    assert result["metric"] == "cosine" and result["distill"] == "cosine"
    assert result["score_after"] > 0.9
    code, stdout, err = run(capsys, "eval", out, "--model", model, "--json")
    assert code == 0, err
    assert json.loads(stdout)["score"] == pytest.approx(result["score_after"], abs=1e-6)


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--task", "{net}:nope"], "has no attribute 'nope'"),
        (["--task", "missing.py:make"], "does not exist"),
        (["--task", "{net}:not_a_task"], "lacks name, metric"),
        (["--data", "{no_x}"], "has no array 'x'"),
        (["--data", "{float_labels}"], "not integer class labels"),
        (["--data", "{wrong_classes}"], "labels run from 0 to 9 but the model outputs 4"),
        (["--data", "{wrong_shape}"], "does not run on its inputs"),
        (["--data", "missing.npz"], "no such file"),
        (["--data", "{net}"], "give a .npz or .pt file"),
        (["--inputs", "{wrong_shape}"], "does not run on its inputs"),
    ],
)
def test_bad_data_is_one_line_before_any_work(capsys, project, bits4, tmp_path, flags, says):
    flags = [flag.format(**{k: str(v) for k, v in project.items()}) for flag in flags]
    out = tmp_path / "m.cpz"
    model = f"{project['net']}:build"
    code, _, err = run(capsys, "apply", "--model", model, "--plan", bits4, "--out", out, *flags)
    assert code == 2, err
    assert err.startswith("compplan: error:") and err.count("\n") == 1, err
    assert says in err, err
    assert not out.exists()


def test_token_ids_of_the_wrong_dtype_are_one_line(capsys, project, tmp_path):
    model = f"{project['encoder']}:build"
    code, _, err = run(capsys, "inspect", "--model", model, "--inputs", project["float_ids"])
    assert code == 2 and err.count("\n") == 1, err
    code, _, err = run(
        capsys, "search", "--model", model, "--inputs", project["float_ids"], "--size-budget",
        "x1.2", "--out", tmp_path / "p.json", "--storage", "memory",
    )  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "float32" in err, err


def test_task_flags_are_one_of_three(capsys, project, bits4, tmp_path):
    code, _, err = run(
        capsys, "apply", "--model", f"{project['net']}:build", "--data", project["data"],
        "--inputs", project["data"], "--plan", bits4, "--out", tmp_path / "m.cpz",
    )  # fmt: skip
    assert code == 2 and "not allowed with argument" in err, err


@pytest.mark.slow
def test_a_worker_rebuilds_the_users_task_from_the_study(capsys, project, tmp_path):
    from planner import Planner
    from search_spaces import Budget
    from search_spaces.model_spec import load_model

    model, data = f"{project['net']}:build", project["data"]
    storage = f"sqlite:///{tmp_path / 's.db'}"
    code, _, err = run(
        capsys, "search", "--model", model, "--data", data, "--size-budget", "x6", "--trials",
        "0", "--storage", storage, "--study", "shared",
    )  # fmt: skip
    assert code == 0, err
    worker = ["worker", "--storage", storage, "--study", "shared", "--trials", "4"]
    code, _, err = run(capsys, *worker)  # the study names code: the model's file
    assert code == 2 and "--trust-specs" in err and err.count("\n") == 1, err
    code, stdout, err = run(capsys, *worker, "--trust-specs", "--json")
    assert code == 0, err
    assert json.loads(stdout)["trials_here"] == 4

    # The worker's proxy weighs layers on the task's inputs, as the creator's did.
    rebuilt = Planner.from_study(storage, "shared", trust_specs=True)
    assert rebuilt.config.task == f"data:{data}" and rebuilt.task.name == f"data:{data}"
    loaded = load_model(model, inputs=data)
    budget = Budget(size_bytes=rebuilt.budget.size_bytes)
    with_task = Planner(
        loaded.module, loaded.example_inputs, budget=budget, storage="memory", task=f"data:{data}"
    )
    without = Planner(loaded.module, loaded.example_inputs, budget=budget, storage="memory")
    assert rebuilt.exact()["proxy"] == pytest.approx(with_task.exact()["proxy"])
    assert rebuilt.exact()["proxy"] != pytest.approx(without.exact()["proxy"])


def test_apply_into_a_log_names_each_slow_layer_on_a_line(
    capsys, caplog, monkeypatch, project, bits4, tmp_path
):
    # stderr here is no terminal, so no bar is drawn: the slow layers are lines instead.
    import engine.apply

    monkeypatch.setattr(engine.apply, "_SLOW_LAYER_SECONDS", 0.0)  # every layer counts as slow
    progress = logging.getLogger("compplan.progress")
    monkeypatch.setattr(progress, "level", logging.WARNING)  # the CLI must turn it on
    model, out = f"{project['net']}:build", tmp_path / "m.cpz"
    code, _, err = run(
        capsys, "apply", "--model", model, "--data", project["data"], "--plan", bits4,
        "--out", out, "--epochs", "0",
    )  # fmt: skip
    assert code == 0, err
    lines = [r.getMessage() for r in caplog.records if r.name == "compplan.progress"]
    planned = json.loads(bits4.read_text())["layers"]
    assert len(lines) == len(planned), lines
    line_form = r"applied \S+ \(bits \S+\) in \d+\.\d s"
    assert all(re.fullmatch(line_form, line) for line in lines), lines
