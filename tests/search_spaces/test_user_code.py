"""User code cannot end compplan as success or as a crash: importing or calling a spec that
exits, is interrupted or raises becomes one `ModelSpecError`, in both spec forms."""

from __future__ import annotations

import sys

import pytest

from search_spaces.model_spec import ModelSpecError, import_callable, load_model, parse_shape


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("exits_now", "interrupts_now", "broken_now"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize(
    ("module", "source", "says"),
    [
        ("exits_now", "raise SystemExit(0)\n", r"exit\(0\)"),
        ("interrupts_now", "raise KeyboardInterrupt\n", "KeyboardInterrupt"),
        ("broken_now", "def build(:\n", "SyntaxError"),
    ],
)
@pytest.mark.parametrize("form", ["file", "module"])
def test_import_failures_are_one_error_in_both_forms(folder, module, source, says, form):
    (folder / f"{module}.py").write_text(source)
    spec = f"{module}.py:build" if form == "file" else f"{module}:build"
    with pytest.raises(ModelSpecError, match=f"importing '{module}(.py)?' failed: .*{says}"):
        import_callable(spec)


def test_a_factory_that_exits_is_an_error_not_an_exit(folder):
    (folder / "calls_exit.py").write_text("import sys\n\ndef build():\n    sys.exit(0)\n")
    with pytest.raises(ModelSpecError, match=r"calling 'calls_exit.py:build' failed.*exit\(0\)"):
        load_model("calls_exit.py:build", input_shape="1,4")


def test_input_shapes_past_the_element_cap_are_refused_before_allocating():
    with pytest.raises(ModelSpecError, match="elements"):
        parse_shape("100000,100000,100000")
    assert parse_shape("1,3,224,224") == (1, 3, 224, 224)


def test_a_model_files_example_input_is_the_same_in_every_run(folder):
    # The search's sensitivities run on it: an input drawn from the global RNG gave a seeded
    # search another plan in every process.
    import torch

    (folder / "small.py").write_text(
        "from torch import nn\n\ndef build():\n    return nn.Linear(4, 2)\n"
    )
    drawn = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        drawn.append(load_model("small.py:build", input_shape="2,4").example_inputs[0])
    assert drawn[0].shape == (2, 4) and drawn[0].dtype == torch.float32
    assert torch.equal(drawn[0], drawn[1])
    assert drawn[0].std() > 0.5  # still random-looking floats, not a constant
