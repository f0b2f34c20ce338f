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


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("plans") / "pqf.json"
    assert (
        main(["preset", "--model", "zoo:digits", "--preset", "pqf-small", "--out", str(path)]) == 0
    )
    return path


def test_apply_then_eval(capsys, tmp_path, plan_file):
    out_file = tmp_path / "digits.cpz"
    code, out, err = run(
        capsys,
        "apply",
        "--model",
        "zoo:digits",
        "--plan",
        str(plan_file),
        "--out",
        str(out_file),
        "--epochs",
        "1",
        "--json",
    )
    assert code == 0, err
    result = json.loads(out)
    assert {"predicted_bytes", "file_bytes", "accuracy_before", "accuracy_after"} <= set(result)
    assert 0 <= result["payload_bytes"] - result["predicted_bytes"] < 16
    assert result["file_bytes"] == out_file.stat().st_size > result["payload_bytes"]
    assert result["accuracy_before"] >= 0.97 and result["accuracy_after"] >= 0.95
    assert round(result["compression_ratio"], 1) == 22.5
    code, out, _ = run(capsys, "eval", str(out_file), "--json")
    assert code == 0
    assert json.loads(out)["accuracy"] == result["accuracy_after"]  # the file is the model


def test_apply_data_free(capsys, tmp_path):
    plan = tmp_path / "bits.json"
    assert main(["preset", "--model", "zoo:digits", "--preset", "bits:4", "--out", str(plan)]) == 0
    capsys.readouterr()
    code, out, err = run(
        capsys,
        "apply",
        "--model",
        "zoo:digits",
        "--plan",
        str(plan),
        "--out",
        str(tmp_path / "d.cpz"),
        "--epochs",
        "1",
        "--no-data",
        "--synthetic",
        "64",
        "--json",
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["data"] == "synthetic" and result["accuracy_after"] >= 0.9


def test_apply_text_output(capsys, tmp_path, plan_file):
    code, out, _ = run(
        capsys,
        "apply",
        "--model",
        "zoo:digits",
        "--plan",
        str(plan_file),
        "--out",
        str(tmp_path / "d.cpz"),
        "--epochs",
        "0",
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
    assert (
        main(["preset", "--model", "zoo:resnet18", "--preset", "bits:4", "--out", str(resnet_plan)])
        == 0
    )
    capsys.readouterr()
    truncated = tmp_path / "cut.cpz"
    good = tmp_path / "good.cpz"
    assert (
        main(
            [
                "apply",
                "--model",
                "zoo:digits",
                "--plan",
                str(plan_file),
                "--out",
                str(good),
                "--epochs",
                "0",
                "--json",
            ]
        )
        == 0
    )
    truncated.write_bytes(good.read_bytes()[:1000])
    model_file = tmp_path / "nobn.py"
    model_file.write_text(NO_BN_MODEL)
    no_bn_plan = tmp_path / "nobn.json"
    spec = f"{model_file}:build"
    shape = "1,3,8,8"
    assert (
        main(
            [
                "preset",
                "--model",
                spec,
                "--input-shape",
                shape,
                "--preset",
                "bits:4",
                "--out",
                str(no_bn_plan),
            ]
        )
        == 0
    )
    capsys.readouterr()
    cases = [
        (
            [
                "apply",
                "--model",
                "zoo:digits",
                "--plan",
                str(resnet_plan),
                "--out",
                str(tmp_path / "x"),
            ],
            "another model",
        ),
        (["eval", str(truncated)], "not a readable safetensors file"),
        (["eval", str(tmp_path / "missing.cpz")], "does not exist"),
        (["eval", str(plan_file)], "not a readable safetensors file"),
        (
            [
                "apply",
                "--model",
                spec,
                "--input-shape",
                shape,
                "--plan",
                str(no_bn_plan),
                "--out",
                str(tmp_path / "y"),
            ],
            "--epochs 0",
        ),
    ]
    for argv, message in cases:
        code, out, err = run(capsys, *argv)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], (argv, err)
    # without fine-tuning, a model with no task and no BatchNorm still compresses
    code, out, err = run(
        capsys,
        "apply",
        "--model",
        spec,
        "--input-shape",
        shape,
        "--plan",
        str(no_bn_plan),
        "--out",
        str(tmp_path / "z.cpz"),
        "--epochs",
        "0",
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["accuracy_after"] is None
    code, _, err = run(capsys, "eval", str(tmp_path / "z.cpz"))
    assert code == 2 and "no task" in err
