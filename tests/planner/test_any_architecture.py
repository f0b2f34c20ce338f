"""Every architecture family of the zoo (`zoo.families`) through the command line, as a user runs
it: inspect, preset, size, validate, a short search, apply, and eval of the file written, which
holds exactly the predicted bytes and computes what the compressed model computed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import planner.compress
from engine.export import load
from planner.cli import main
from zoo import families

NAMES = [entry.name for entry in families.ENTRIES]


def run(capsys, command: str) -> tuple[int, str, str]:
    """Run `compplan COMMAND` (paths in it must have no spaces); (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(command.split())
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on two shared cores a second one makes k-means several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def inputs_files(tmp_path_factory) -> dict[str, str]:
    """Inputs-only data files (`--inputs`): 64 random images, and 64 rows of token ids."""
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    images, ids = folder / "images.npz", folder / "ids.npz"
    np.savez(images, x=rng.standard_normal((64, 3, 64, 64)).astype(np.float32))
    np.savez(ids, x=rng.integers(1, families.BERT_VOCAB, (64, 32)).astype(np.int64))
    return {"images": str(images), "ids": str(ids)}


def _inputs_of(name: str, files: dict[str, str]) -> str:
    return files["ids" if name == "bert_tiny" else "images"]


@pytest.mark.parametrize("name", NAMES)
def test_inspect_and_size(capsys, tmp_path, name):
    code, out, err = run(capsys, f"inspect --model zoo:{name} --json")
    assert code == 0, err
    graph = json.loads(out)
    assert sum(row["params"] for row in graph["layers"]) == graph["total_params"]
    assert any(row["compressible"] for row in graph["layers"])
    plan = tmp_path / "bits4.json"
    assert run(capsys, f"preset --model zoo:{name} --preset bits:4 --out {plan}")[0] == 0
    code, out, err = run(capsys, f"size --model zoo:{name} --plan {plan} --json")
    assert code == 0, err
    size = json.loads(out)
    assert size["baseline_bytes"] == graph["baseline_bytes"]
    assert 1 < size["compression_ratio"] < 8  # 4-bit weights, the ends and the kept at 32
    code, out, err = run(capsys, f"validate --model zoo:{name} --plan {plan}")
    assert code == 0 and "is valid" in out, err


@pytest.mark.slow  # a search, k-means and an export per model: 3 to 10 s each
@pytest.mark.parametrize("name", NAMES)
def test_search_apply_eval(capsys, tmp_path, monkeypatch, inputs_files, name):
    inputs = _inputs_of(name, inputs_files)
    plan, out_file = tmp_path / "plan.json", tmp_path / "model.cpz"
    code, out, err = run(
        capsys,
        f"search --model zoo:{name} --size-budget x8 --trials 20 "
        f"--storage sqlite:///{tmp_path / 'studies.db'} --out {plan} --json",
    )
    assert code == 0, err
    searched = json.loads(out)
    assert searched["feasible_trials"] > 0
    assert searched["best"]["size_bytes"] <= searched["budget"]["size_bytes"]

    # What `apply` exported, caught in flight: the compressed model, frozen as written.
    exported = {}

    def keep_exported(model, path, **kwargs):
        report = export(model, path, **kwargs)
        exported["model"] = model
        return report

    export = planner.compress.export
    monkeypatch.setattr(planner.compress, "export", keep_exported)
    code, out, err = run(
        capsys,
        f"apply --model zoo:{name} --plan {plan} --out {out_file} --epochs 0 "
        f"--inputs {inputs} --json",
    )
    assert code == 0, err
    applied = json.loads(out)
    assert applied["predicted_bytes"] == searched["best"]["size_bytes"]
    assert 0 <= applied["payload_bytes"] - applied["predicted_bytes"] < 16  # bit-packing pads
    assert applied["file_bytes"] == out_file.stat().st_size
    assert applied["compression_ratio"] >= 8 * (1 - 1e-3)

    code, out, err = run(capsys, f"eval {out_file} --inputs {inputs} --json")
    assert code == 0, err
    assert json.loads(out)["score"] == applied["score_after"]  # the file is the model

    x = torch.from_numpy(np.load(inputs)["x"][:8])
    with torch.no_grad():
        compressed = exported["model"](x)
        loaded = load(out_file)(x)
    assert (compressed - loaded).abs().max().item() <= 1e-6
