"""An exported file is refused in one line, exit 2, before anything its metadata names is
allocated, when that metadata disagrees with its plan or its structure (issue 17, item 3); its
checksum covers the metadata too; format 2 files still load; export writes atomically.

The edited files are made as a hand or a tool would make them: the header's metadata rewritten,
its checksum left as it was.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine.apply import ApplyConfig, apply_plan_
from engine.export import _META_KEY, ExportError, _digest, export, load
from planner.cli import main
from search_spaces import BitsConfig, LayerPlan, N2UQConfig, Plan, VQConfig, discover
from zoo.digits import INPUT_SHAPE, DigitsNet

SPEC = "zoo:digits"
VQ_LAYER = "blocks.0.conv1"  # 64x64x3x3, k=256 m=9: 4096 subvectors, so k_eff = 256
BITS_LAYER = "blocks.0.conv2"
PRUNED_LAYER = "blocks.1.conv1"
DENSE_LAYER = "blocks.2.conv1"  # 8-bit inputs only: its weight stays dense
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(the file, the frozen model, inputs): VQ, b-bit with 8-bit inputs, 8-bit inputs to a
    dense weight, and a pruned group."""
    torch.manual_seed(0)
    model = DigitsNet().eval()
    graph = discover(model, torch.zeros(INPUT_SHAPE), model_name=SPEC)
    pruned = graph.group_of(PRUNED_LAYER)
    assert pruned is not None and pruned.prunable
    layers = {name: LayerPlan(keep=0.5) for name in pruned.layers}
    layers[VQ_LAYER] = LayerPlan(weights=VQConfig(k=256, m=9))
    layers[BITS_LAYER] = LayerPlan(weights=BitsConfig(bits=4), activations=N2UQConfig(bits=8))
    layers[DENSE_LAYER] = LayerPlan(activations=N2UQConfig(bits=8))
    plan = Plan(layers, model=SPEC, fingerprint=graph.fingerprint)
    config = ApplyConfig(progress=False, kmeans_iterations=2)
    apply_plan_(model, plan, calibration=torch.rand(32, *INPUT_SHAPE[1:]), config=config)
    path = tmp_path_factory.mktemp("export") / "m.cpz"
    export(model, path, model_spec=SPEC, task=SPEC)
    return path, model, torch.rand(8, *INPUT_SHAPE[1:])


def _metadata(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()[_META_KEY])


def _rewritten(path: Path, out: Path, meta: dict) -> Path:
    """`path`'s tensors under the metadata `meta`, at `out`."""
    save_file(load_file(str(path)), str(out), metadata={_META_KEY: json.dumps(meta)})
    return out


def _edited(path: Path, out: Path, edit) -> Path:
    """`path` with its metadata changed by `edit(meta)` in place, its checksum left as it was."""
    meta = _metadata(path)
    edit(meta)
    return _rewritten(path, out, meta)


def _weights(meta: dict, layer: str) -> dict:
    return meta["layers"][layer]["weights"]


def _set(getter, key, value):
    return lambda meta: getter(meta).__setitem__(key, value)


# Each edit, and what the one-line refusal says (the layer and the fact).
EDITS = {
    "plan k 256 -> 16": (
        _set(lambda m: m["plan"]["layers"][VQ_LAYER]["weights"], "k", 16),
        rf"layer {VQ_LAYER} records k_eff 256, its plan \(vq k=16 m=9 d=9\) gives 16",
    ),
    "layer shape": (
        _set(lambda m: _weights(m, VQ_LAYER), "shape", [64, 32, 3, 3]),
        rf"layer {VQ_LAYER} records the weight shape \[64, 32, 3, 3\], the model's is "
        r"\[64, 64, 3, 3\]",
    ),
    "k_eff 10**12": (
        _set(lambda m: _weights(m, VQ_LAYER), "k_eff", 10**12),
        rf"layer {VQ_LAYER} records k_eff 1000000000000, its plan .* gives 256",
    ),
    "count 10**12": (
        _set(lambda m: _weights(m, VQ_LAYER), "count", 10**12),
        rf"layer {VQ_LAYER} records count 1000000000000, more than its 36864 weights",
    ),
    "bits 4 -> 8": (
        _set(lambda m: _weights(m, BITS_LAYER), "bits", 8),
        rf"layer {BITS_LAYER} records bits 8, its plan \(bits 4\) gives 4",
    ),
    "dense shape": (
        _set(lambda m: _weights(m, DENSE_LAYER), "shape", [10**6, 128, 3, 3]),
        rf"layer {DENSE_LAYER} records the weight shape \[1000000, 128, 3, 3\]",
    ),
    "geometry": (
        _set(lambda m: m["layers"][VQ_LAYER]["geometry"], "stride", [2, 2]),
        rf"layer {VQ_LAYER} records the geometry",
    ),
    "activations": (
        _set(lambda m: m["layers"][BITS_LAYER]["activations"], "bits", 2),
        rf"layer {BITS_LAYER} records the activations",
    ),
    "keeps": (
        lambda m: m["keeps"].update({k: 0.25 for k, v in m["keeps"].items() if v < 1}),
        r"records the keeps",
    ),
    "input shape": (
        lambda m: m.__setitem__("input_shape", [10**6, 1, 8, 8]),
        r"input shape \[1000000, 1, 8, 8\] has 64000000 elements",
    ),
    "a layer the plan leaves as is": (
        lambda m: m["layers"].__setitem__("blocks.2.conv2", m["layers"][VQ_LAYER]),
        r"records layer blocks.2.conv2, which its plan leaves as is",
    ),
}


def test_the_unedited_file_loads_and_computes_the_same(exported):
    path, model, x = exported
    with torch.no_grad():
        assert torch.equal(load(path)(x), model(x))


@pytest.mark.parametrize("edit", list(EDITS))
def test_edited_metadata_is_refused_naming_the_layer_and_the_fact(exported, tmp_path, edit):
    change, message = EDITS[edit]
    path = _edited(exported[0], tmp_path / "edited.cpz", change)
    with pytest.raises(
        ExportError, match=rf"^{re.escape(str(path))} is damaged: .*{message}"
    ) as error:
        load(path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("edit", ["plan k 256 -> 16", "layer shape", "k_eff 10**12"])
def test_eval_of_an_edited_file_exits_2_with_one_line(exported, tmp_path, capsys, edit):
    change, message = EDITS[edit]
    path = _edited(exported[0], tmp_path / "edited.cpz", change)
    capsys.readouterr()
    assert main(["eval", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("compplan: error: ")
    assert re.search(message, err), err


def test_eval_with_a_model_given_bounds_the_recorded_input_shape_first(exported, tmp_path, capsys):
    """`eval --model` builds the structure at the recorded input shape before `load` runs."""
    change, message = EDITS["input shape"]
    path = _edited(exported[0], tmp_path / "edited.cpz", change)
    capsys.readouterr()
    assert main(["eval", str(path), "--model", SPEC]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err


def test_a_huge_k_eff_is_refused_fast_without_allocating(exported, tmp_path):
    """In a fresh process, so that its peak memory is the refusal's and not an earlier test's."""
    path = _edited(exported[0], tmp_path / "edited.cpz", EDITS["k_eff 10**12"][0])
    script = textwrap.dedent(
        f"""
        import json, resource, time
        from engine.export import ExportError, load
        import zoo.digits  # the structure's module, imported before the peak is read
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        try:
            load({str(path)!r})
            error = None
        except ExportError as refused:
            error = str(refused)
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"error": error, "seconds": seconds, "grown_kib": after - before}}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["error"] and "k_eff 1000000000000" in result["error"]
    assert result["grown_kib"] < 200 * 1024  # ru_maxrss is in KiB on Linux
    assert result["seconds"] < 10


def test_the_checksum_covers_the_metadata(exported, tmp_path):
    """An edit no size check can see (the distillation loss recorded) is damage all the same."""
    path = _edited(exported[0], tmp_path / "edited.cpz", lambda m: m.__setitem__("distill", "mse"))
    with pytest.raises(ExportError, match="its metadata or tensors do not match their checksum"):
        load(path)


def test_a_format_2_file_still_loads_and_is_still_size_checked(exported, tmp_path):
    """Format 2's checksum covered the tensors only; its metadata passes the same checks."""
    source, model, x = exported
    meta = _metadata(source)
    meta["version"] = 2
    meta["sha256"] = _digest(load_file(str(source)))
    old = _rewritten(source, tmp_path / "v2.cpz", meta)
    with torch.no_grad():
        assert torch.equal(load(old)(x), model(x))
    edited = _edited(old, tmp_path / "v2-edited.cpz", EDITS["k_eff 10**12"][0])
    with pytest.raises(ExportError, match=EDITS["k_eff 10**12"][1]):
        load(edited)


def test_export_writes_whole_files_and_refuses_links_and_folders(exported, tmp_path):
    _, model, x = exported
    path = tmp_path / "again.cpz"
    report = export(model, path, model_spec=SPEC)
    assert report.file_bytes == path.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.cpz"]  # no temporary left
    target = tmp_path / "target.bin"
    target.write_bytes(b"keep me")
    (tmp_path / "link.cpz").symlink_to(target)
    with pytest.raises(ExportError, match="symbolic link"):
        export(model, tmp_path / "link.cpz", model_spec=SPEC)
    assert target.read_bytes() == b"keep me"
    with pytest.raises(ExportError, match="is a directory"):
        export(model, tmp_path, model_spec=SPEC)
    with torch.no_grad():
        assert torch.equal(load(path)(x), model(x))
