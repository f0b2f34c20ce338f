"""The compplan CLI as a user runs it: tables, JSON, plan files, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from planner.cli import main

SMALL_MODEL = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(32)
        self.mid = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.block = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        y = torch.relu(self.bn(self.stem(x)))
        y = torch.relu(y + self.bn2(self.block(torch.relu(self.bn1(self.mid(y))))))
        return self.head(self.norm(y.mean((2, 3))))

def build():
    return Net()
"""


@pytest.fixture()
def small_model(tmp_path):
    path = tmp_path / "small_model.py"
    path.write_text(SMALL_MODEL)
    return f"{path}:build"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_json_accounts_for_every_parameter(capsys, small_model):
    code, out, _ = run(
        capsys, "inspect", "--model", small_model, "--input-shape", "1,3,16,16", "--json"
    )
    assert code == 0
    data = json.loads(out)
    assert {"model", "total_params", "baseline_bytes", "layers"} <= set(data)
    assert sum(row["params"] for row in data["layers"]) == data["total_params"]
    assert data["baseline_bytes"] == 4 * data["total_params"]
    rows = {row["name"]: row for row in data["layers"]}
    for row in rows.values():
        assert set(row) == {
            "name",
            "kind",
            "weight_shape",
            "params",
            "macs",
            "group",
            "compressible",
            "reason",
        }
    assert rows["block"]["compressible"] and rows["block"]["weight_shape"] == [32, 32, 3, 3]
    assert rows["block"]["macs"] == 16 * 16 * 32 * 32 * 9
    assert not rows["norm"]["compressible"] and "LayerNorm" in rows["norm"]["reason"]
    assert not rows["bn"]["compressible"] and "folded after 'stem'" in rows["bn"]["reason"]


def test_inspect_json_is_the_graphs_own_description(capsys, resnet18_graph):
    code, out, _ = run(capsys, "inspect", "--model", "zoo:resnet18", "--json")
    assert code == 0
    assert json.loads(out) == json.loads(json.dumps(resnet18_graph.to_dict()))


def test_inspect_table(capsys):
    code, out, _ = run(capsys, "inspect", "--model", "zoo:resnet18", "--groups")
    assert code == 0
    assert "layer4.1.conv2" in out and "11,689,512 parameters" in out
    assert "coupling groups: 13 (12 prunable)" in out
    assert "not prunable: its channels are part of the model's output" in out


@pytest.mark.parametrize(
    ("model", "preset", "ratio", "mib"),
    [("zoo:resnet18", "pqf-small", 28.9, 1.54), ("zoo:resnet18", "pqf-large", 43.3, 1.03)],
)
def test_size_json_reproduces_pqf(capsys, model, preset, ratio, mib):
    code, out, _ = run(capsys, "size", "--model", model, "--preset", preset, "--json")
    assert code == 0
    data = json.loads(out)
    assert {"size_bytes", "size_mib", "baseline_bytes", "compression_ratio", "layers"} <= set(data)
    assert round(data["compression_ratio"], 1) == ratio and round(data["size_mib"], 2) == mib
    assert len(data["layers"]) == 21


def test_preset_then_size_then_validate(capsys, tmp_path, small_model):
    plan = tmp_path / "plan.json"
    shape = ("--input-shape", "1,3,16,16")
    code, out, _ = run(
        capsys,
        "preset",
        "--model",
        small_model,
        *shape,
        "--preset",
        "bits:4+keep:0.5",
        "--out",
        str(plan),
    )
    assert code == 0 and "wrote" in out
    layers = json.loads(plan.read_text())["layers"]
    assert layers["mid"] == {"weights": {"method": "bits", "bits": 4}, "keep": 0.5}
    # its channels reach the LayerNorm: not pruned
    assert layers["block"] == {"weights": {"method": "bits", "bits": 4}}
    code, out, _ = run(
        capsys, "size", "--model", small_model, *shape, "--plan", str(plan), "--json"
    )
    from_file = json.loads(out)
    code, out, _ = run(
        capsys, "size", "--model", small_model, *shape, "--preset", "bits:4+keep:0.5", "--json"
    )
    assert json.loads(out)["size_bytes"] == from_file["size_bytes"] < from_file["baseline_bytes"]
    code, out, _ = run(capsys, "validate", "--model", small_model, *shape, "--plan", str(plan))
    assert code == 0 and "is valid" in out


BAD_PLANS = {
    "not json": ("{layers: ", "not valid JSON"),
    "a list": ("[]", "a plan is a JSON object"),
    "wrong format tag": ({"format": "other"}, "not a compplan plan"),
    "future schema": ({"schema_version": 7}, "upgrade compplan"),
    "unknown layer": ({"layers": {"stem2": {"keep": 0.5}}}, "'stem2' is not a compressible layer"),
    "m not dividing D": ({"layers": {"block": {"k": 16, "m": 7}}}, "m=7 does not divide"),
    "k not a power of two": (
        {"layers": {"block": {"k": 100, "m": 9}}},
        "k=100 is not a power of two",
    ),
    "d_tilde above m": (
        {"layers": {"block": {"k": 16, "m": 9, "d_tilde": 12}}},
        "d_tilde=12 must be in 1..m=9",
    ),
    "keep out of range": ({"layers": {"block": {"keep": 1.5}}}, r"keep=1.5 is outside \(0, 1\]"),
    "VQ and bits": ({"layers": {"block": {"k": 16, "m": 9, "weight_bits": 4}}}, "both set"),
    "wrong model": ({"fingerprint": "sha256:0000000000000000"}, "made for another model"),
    "unknown knob": ({"layers": {"block": {"bits": 4}}}, "unknown knob"),
    "keep on an unprunable group": (
        {"layers": {"stem": {"keep": 0.5}}},
        "cannot be pruned .*LayerNorm",
    ),
    "kept layer": ({"layers": {"norm": {"weight_bits": 4}}}, "kept as is"),
}


@pytest.mark.parametrize("case", sorted(BAD_PLANS))
def test_bad_plan_files_give_one_line_and_exit_2(capsys, tmp_path, small_model, case):
    content, message = BAD_PLANS[case]
    if isinstance(content, dict):
        document = {"format": "compplan-plan", "schema_version": 1, "layers": {}}
        document.update(content)
        content = json.dumps(document)
    path = tmp_path / "bad.json"
    path.write_text(content)
    code, out, err = run(
        capsys,
        "validate",
        "--model",
        small_model,
        "--input-shape",
        "1,3,16,16",
        "--plan",
        str(path),
    )
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("compplan: error: ")
    assert __import__("re").search(message, lines[0]), lines[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inspect", "--model", "zoo:resnet9"], "unknown zoo model 'resnet9'; choose one of"),
        (["inspect", "--model", "no_such_pkg.models:net"], "cannot import 'no_such_pkg.models'"),
        (
            ["inspect", "--model", "builtins:len", "--input-shape", "1,3"],
            "calling 'builtins:len' failed",
        ),
        (
            ["inspect", "--model", "zoo:resnet18", "--input-shape", "1,3"],
            "does not run on example inputs",
        ),
        (
            ["inspect", "--model", "zoo:resnet18", "--input-shape", "1,x"],
            "not a list of positive integers",
        ),
        (["size", "--model", "zoo:resnet18", "--preset", "pqf-tiny"], "unknown preset 'pqf-tiny'"),
        (["size", "--model", "zoo:resnet18", "--preset", "keep:2"], "keep ratio must be in"),
        (["size", "--model", "zoo:resnet18", "--plan", "/no/such/plan.json"], "does not exist"),
        (
            [
                "preset",
                "--model",
                "zoo:resnet18",
                "--preset",
                "pqf-small",
                "--out",
                "/no/such/dir/p.json",
            ],
            "the folder /no/such/dir does not exist",
        ),
        (["sizes"], "invalid choice"),
        (["size", "--model", "zoo:resnet18"], "one of the arguments --plan --preset is required"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err


def test_help_teaches(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "examples:" in out and "zoo:NAME" in out
    code, out, _ = run(capsys, "size", "--help")
    assert code == 0 and "pqf-small" in out and "--input-shape" in out


def test_console_script_prints_no_traceback(tmp_path):
    script = Path(sys.executable).with_name("compplan")
    bad = tmp_path / "bad.json"
    bad.write_text(
        '{"format": "compplan-plan", "schema_version": 1, "layers": {"fc": {"k": 3, "m": 4}}}'
    )
    result = subprocess.run(
        [str(script), "validate", "--model", "zoo:resnet18", "--plan", str(bad)],
        capture_output=True,
        text=True,
        env={**os.environ, "COMPPLAN_DEBUG": ""},
        check=False,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"compplan: error: {bad}: layer 'fc': field 'k': k=3 is not a power of two"
    )
    assert "Traceback" not in result.stderr


def test_the_help_names_every_zoo_model():
    import zoo
    from planner.cli_parser import build_parser

    epilog = build_parser().format_help()
    assert [name for name in zoo.names() if name not in epilog] == []
