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
