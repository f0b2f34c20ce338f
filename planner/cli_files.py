"""The files a command's arguments name: what it reads and what it writes.

`check_command_files(args)` applies the one output rule to every command before it starts: no
output may be the same file as one of its inputs (a plan, a data file, records, a predictor, the
model's or task's own `.py` file, the study's SQLite or journal file) or as another output. A new
command's file options join the rule by appearing in `INPUTS` or `OUTPUTS`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from search_spaces.output_file import check_distinct_files

__all__ = ["INPUTS", "OUTPUTS", "check_command_files", "command_storage_file"]

# argparse dest → how messages name the option.
INPUTS = {
    "plan": "--plan",
    "records": "records file",
    "file": "the model file",  # eval's and export's FILE
    "model": "--model",
    "task": "--task",
    "data": "--data",
    "inputs": "--inputs",
    "latency_model": "--latency-model",
    "predictor": "--predictor",
    "storage": "--storage",
}
OUTPUTS = {"out": "--out", "trials_csv": "--trials-csv", "plot": "--plot"}


def check_command_files(args: argparse.Namespace) -> None:
    """Refuse, before any work, outputs that would overwrite an input or each other.

    Raises:
        OutputFileError: naming both options.
    """
    inputs: dict[str, str] = {}
    for dest, name in INPUTS.items():
        for number, path in enumerate(_paths(dest, getattr(args, dest, None), args)):
            inputs[name if number == 0 else f"{name} #{number + 1}"] = path
    outputs = {name: getattr(args, dest, None) for dest, name in OUTPUTS.items()}
    check_distinct_files(outputs, inputs)


def _paths(dest: str, value: object, args: argparse.Namespace) -> list[str]:
    """The file paths one argument's value names (a spec's `.py` file, a storage's file)."""
    if dest == "storage":
        from planner.storage import DEFAULT_STORAGE, storage_file

        if value is None and args.command == "search":
            value = DEFAULT_STORAGE
        file = storage_file(value) if isinstance(value, str) else None
        return [] if file is None else [str(file)]
    if dest in ("model", "task"):
        where = value.rsplit(":", 1)[0] if isinstance(value, str) and ":" in value else ""
        return [where] if where.endswith(".py") else []
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return [] if value is None else [str(Path(value))]


def command_storage_file(args: argparse.Namespace) -> Path | None:
    """The SQLite or journal file a search or worker keeps its study in (None: none)."""
    if args.command not in ("search", "worker"):
        return None
    paths = _paths("storage", getattr(args, "storage", None), args)
    return Path(paths[0]) if paths else None
