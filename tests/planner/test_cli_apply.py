"""`compplan apply` and `compplan eval` as a user runs them, on the digits model."""

from __future__ import annotations

import json

import pytest

from planner.cli import main

pytestmark = pytest.mark.slow  # trains zoo:digits once (about 20 s) into a temporary cache


@pytest.fixture(scope="module", autouse=True)
def digits_cache(tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("COMPPLAN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield
    monkeypatch.undo()


def run(capsys, command: str):
    """Run `compplan COMMAND` (paths in it must have no spaces); (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(command.split())
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("plans") / "pqf.json"
    assert main(f"preset --model zoo:digits --preset pqf-small --out {path}".split()) == 0
    return path


def test_apply_then_eval(capsys, tmp_path, plan_file):
    out_file = tmp_path / "digits.cpz"
    code, out, err = run(
        capsys, f"apply --model zoo:digits --plan {plan_file} --out {out_file} --epochs 1 --json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert {"predicted_bytes", "file_bytes", "score_before", "score_after", "metric"} <= set(result)
    assert 0 <= result["payload_bytes"] - result["predicted_bytes"] < 16
    assert result["file_bytes"] == out_file.stat().st_size > result["payload_bytes"]
    assert result["metric"] == "accuracy" and result["task"] == "zoo:digits"
    assert result["score_before"] >= 0.97 and result["score_after"] >= 0.95
    assert round(result["compression_ratio"], 1) == 22.5
    code, out, _ = run(capsys, f"eval {out_file} --json")
    assert code == 0
    assert json.loads(out)["score"] == result["score_after"]  # the file is the model


def test_apply_data_free(capsys, tmp_path):
    plan = tmp_path / "bits.json"
    assert run(capsys, f"preset --model zoo:digits --preset bits:4 --out {plan}")[0] == 0
    code, out, err = run(
        capsys,
        f"apply --model zoo:digits --plan {plan} --out {tmp_path / 'd.cpz'} --epochs 1 "
        "--no-data --synthetic 64 --json",
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["data"] == "synthetic" and result["score_after"] >= 0.9


def test_apply_text_output(capsys, tmp_path, plan_file):
    code, out, _ = run(
        capsys, f"apply --model zoo:digits --plan {plan_file} --out {tmp_path / 'd.cpz'} --epochs 0"
    )
    assert code == 0
    assert "accuracy" in out and "predicted 107,032" in out


NO_BN_MODEL = """
from torch import nn

def build():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
"""


def test_bad_inputs_are_one_line_errors(capsys, tmp_path, plan_file):
    resnet_plan = tmp_path / "r18.json"
    assert run(capsys, f"preset --model zoo:resnet18 --preset bits:4 --out {resnet_plan}")[0] == 0
    good, truncated = tmp_path / "good.cpz", tmp_path / "cut.cpz"
    command = f"apply --model zoo:digits --plan {plan_file} --out {good} --epochs 0 --json"
    assert run(capsys, command)[0] == 0
    truncated.write_bytes(good.read_bytes()[:1000])
    model_file = tmp_path / "nobn.py"
    model_file.write_text(NO_BN_MODEL)
    no_bn_plan = tmp_path / "nobn.json"
    user_model = f"--model {model_file}:build --input-shape 1,3,8,8"
    assert run(capsys, f"preset {user_model} --preset bits:4 --out {no_bn_plan}")[0] == 0
    cases = {
        f"apply --model zoo:digits --plan {resnet_plan} --out {tmp_path / 'x'}": "another model",
        f"eval {truncated}": "not a readable safetensors file",
        f"eval {tmp_path / 'missing.cpz'}": "does not exist",
        f"eval {plan_file}": "not a readable safetensors file",
        f"apply {user_model} --plan {no_bn_plan} --out {tmp_path / 'y'}": "--epochs 0",
    }
    for command, message in cases.items():
        code, _, err = run(capsys, command)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], (command, err)
    # without fine-tuning, a model with no task and no BatchNorm still compresses
    out_file = tmp_path / "z.cpz"
    code, out, err = run(
        capsys, f"apply {user_model} --plan {no_bn_plan} --out {out_file} --epochs 0 --json"
    )
    assert code == 0, err
    assert json.loads(out)["score_after"] is None
    code, _, err = run(capsys, f"eval {out_file}")
    assert code == 2 and "no task" in err
