"""The shape DESIGN.md draws, checked on the source: package arrows one way, no import cycle
among modules (imports inside functions count too), a thin CLI, classes with one job."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search_spaces", "predictors", "engine", "planner", "zoo")
# What each package may import of the others (DESIGN.md, Packages): planner → predictors →
# search_spaces; engine → search_spaces; planner → engine; zoo stands alone below them all.
ALLOWED = {
    "search_spaces": {"zoo"},
    "predictors": {"search_spaces", "zoo"},
    "engine": {"search_spaces", "zoo"},
    "planner": {"search_spaces", "predictors", "engine", "zoo"},
    "zoo": set(),
}
# Known crossings, each with its reason; a new one fails the test.
EXCEPTIONS = {
    # The profiler times the deployed form, which the engine builds, in its measuring
    # processes (imported there only). The protocol itself, `predictors.profile.
    # measure_relative`, takes any two modules and imports nothing of the engine.
    ("predictors.latency.profiling", "engine.deploy"),
    # ... and, on ONNX Runtime, exports that form as the applied model's file writes it and
    # opens a session on it (`--runtime onnxruntime`), in the measuring processes only.
    ("predictors.latency.runtime_forms", "engine.onnx_export"),
    ("predictors.latency.runtime_forms", "engine.onnx_session"),
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports anywhere in it (module level or inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name in modules}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_packages_import_only_what_the_design_allows(graph):
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if (a := module.split(".")[0]) != (b := target.split(".")[0])
        and b not in ALLOWED[a]
        and (module, target) not in EXCEPTIONS
    )
    assert not wrong, wrong


def test_no_import_cycle_among_modules(graph):
    # Depth-first search with colours: a grey module met again closes a cycle.
    colour: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        colour[module] = "grey"
        for target in sorted(graph[module]):
            if colour.get(target) == "grey":
                cycles.append([*path[path.index(target) :], target])
            elif target not in colour:
                visit(target, [*path, target])
        colour[module] = "black"

    for module in sorted(graph):
        if module not in colour:
            visit(module, [module])
    assert not cycles, [" → ".join(c) for c in cycles]


def test_the_cli_is_thin_and_planner_classes_have_one_job():
    cli = ROOT / "planner" / "cli.py"
    assert cli.read_text().count("\n") < 600
    long = []
    for path in (ROOT / "planner").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 300:
                long.append(f"{path.name}: {node.name}")
    assert not long, long


def test_the_public_planner_api():
    from planner import Planner, SearchConfig, SearchResult

    assert callable(Planner.from_study)
    assert SearchConfig().to_dict()["format"] == "compplan-search-config"
    assert "best_plan" in SearchResult.__dataclass_fields__
