"""Deploy on ONNX Runtime: a stranger's model from a file goes apply → export → a plain
onnxruntime session → eval with the `.cpz`'s score; and what export and eval refuse."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from support.user_project import write_project

from planner.cli import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A user's project with a plan applied: (folder, files, .cpz)."""
    folder = tmp_path_factory.mktemp("user")
    files = write_project(folder)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        spec = ["--model", "usernet.py:build", "--input-shape", "1,16"]
        assert main(["preset", *spec, "--preset", "pqf-small", "--out", "plan.json"]) == 0
        assert main(["apply", *spec, "--plan", "plan.json", "--data", "data.npz",
                     "--epochs", "0", "--out", "net.cpz"]) == 0  # fmt: skip
    finally:
        os.chdir(cwd)
    return folder, files, folder / "net.cpz"


def test_a_users_model_runs_in_a_plain_session_and_scores_as_its_cpz(project, capsys):
    import onnxruntime

    folder, files, cpz = project
    out = folder / "net.onnx"
    code, text, err = _run(capsys, "export", cpz, "--out", out, "--trust-specs", "--json")
    assert code == 0, err
    import json

    report = json.loads(text)
    assert report["planned_bytes"] <= report["predicted_bytes"] <= report["payload_bytes"]
    assert report["payload_bytes"] - report["predicted_bytes"] < 1024  # shape constants
    assert report["dynamic_batch"]
    x = np.load(files["data"])["x"][:64]
    session = onnxruntime.InferenceSession(str(out))  # no compplan in the way
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    from engine.export import load
    from search_spaces.model_spec import load_model

    structure = load_model(f"{folder}/usernet.py:build", input_shape="1,16", pretrained=False)
    with torch.no_grad():
        expected = load(cpz, model=structure.module)(torch.from_numpy(x)).numpy()
    assert np.allclose(logits, expected, atol=1e-4)
    scores = []
    for file in (cpz, out):
        code, text, err = _run(
            capsys, "eval", file, "--data", files["data"], "--trust-specs", "--json"
        )
        assert code == 0, err
        scores.append(json.loads(text)["score"])
    assert scores[0] == scores[1] > 0.5


def test_export_refusals_are_one_line(project, capsys, tmp_path):
    _, _, cpz = project
    (tmp_path / "adir").mkdir()
    damaged = tmp_path / "damaged.cpz"
    data = bytearray(cpz.read_bytes())
    data[-10] ^= 0xFF  # in the tensors: the checksum fails
    damaged.write_bytes(bytes(data))
    for argv, says in (
        (["export", cpz, "--out", tmp_path / "adir", "--trust-specs"], "is a directory"),
        (["export", damaged, "--out", tmp_path / "d.onnx", "--trust-specs"], "damaged"),
        (["export", cpz, "--out", cpz, "--trust-specs"], "same file"),
        (["export", cpz, "--out", tmp_path / "u.onnx"], "--trust-specs"),
    ):
        code, _, err = _run(capsys, *argv)
        assert code == 2 and err.count("\n") == 1 and says in err, err
    assert sorted(os.listdir(tmp_path)) == ["adir", "damaged.cpz"]


def test_eval_refuses_an_onnx_file_of_another_model(project, capsys, tmp_path):
    _, files, cpz = project
    out = tmp_path / "net.onnx"
    assert _run(capsys, "export", cpz, "--out", out, "--trust-specs")[0] == 0
    code, _, err = _run(capsys, "eval", out, "--model", "zoo:digits", "--data", files["data"])
    assert code == 2 and err.count("\n") == 1 and "another model" in err, err


def test_eval_checks_a_token_id_models_onnx_file_against_its_own_spec(project, capsys):
    # The structure check traces the model named by --model: on float inputs a token-id model
    # failed to run, and its own file was refused as "another model".
    folder, files, _ = project
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        spec = ["--model", "encoder.py:build", "--inputs", files["ids"]]
        assert _run(capsys, "preset", *spec, "--preset", "bits:8", "--out", "enc.json")[0] == 0
        assert _run(capsys, "apply", *spec, "--plan", "enc.json", "--epochs", "0",
                    "--out", "enc.cpz")[0] == 0  # fmt: skip
        assert _run(capsys, "export", "enc.cpz", "--out", "enc.onnx", "--trust-specs")[0] == 0
        code, out, err = _run(capsys, "eval", "enc.onnx", *spec, "--json")
    finally:
        os.chdir(cwd)
    assert code == 0, err
    import json

    assert json.loads(out)["score"] > 0.99  # 8-bit weights keep the encoder's outputs


def test_a_kind_without_an_onnx_form_is_named_with_its_layer(project, capsys, tmp_path):
    from search_spaces.methods import weight_method

    unit = type(weight_method("vq"))
    original = unit.onnx_weight
    try:
        del unit.onnx_weight  # the base class's: no ONNX form
        _, _, cpz = project
        code, _, err = _run(capsys, "export", cpz, "--out", tmp_path / "x.onnx", "--trust-specs")
    finally:
        unit.onnx_weight = original
    assert code == 2 and err.count("\n") == 1, err
    assert "layer '" in err and "'vq' has no ONNX form" in err
    assert not (tmp_path / "x.onnx").exists()


def test_measure_latency_on_onnxruntime_times_the_plans_file(capsys):
    code, text, err = _run(
        capsys, "measure-latency", "--model", "zoo:digits", "--preset", "keep:0.5",
        "--runtime", "onnxruntime", "--min-time-ms", "200", "--json",
    )  # fmt: skip
    assert code == 0, err
    import json

    document = json.loads(text)
    assert document["runtime"] == "onnxruntime"
    assert 0.05 < document["ratio"] < 1.0  # half the channels: faster than the model


def test_onnxruntime_missing_is_said_with_the_install_command(capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # an import of it now fails
    code, _, err = _run(
        capsys, "measure-latency", "--model", "zoo:digits", "--preset", "keep:0.5",
        "--runtime", "onnxruntime",
    )  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "pip install onnxruntime" in err, err
    assert shutil.which  # (keeps the import used where the test above needs none)
