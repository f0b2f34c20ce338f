"""Input files: checked before they are read, and read within limits.

Every file compplan reads that a user names (plans, predictors, records, data, exported models,
model and task files) is checked here first, so that what a file holds decides nothing about
what compplan allocates or how long it blocks:
- `check_input_file(path, what)` refuses a path that does not exist, a directory, or a device,
  pipe or socket (`/dev/zero` would be read forever, a FIFO would block), and a path with
  control characters;
- `read_json(path, what)` reads a JSON file of at most `MAX_JSON_BYTES`, and `parse_json` refuses
  nesting deeper than `MAX_JSON_DEPTH` and numbers longer than `MAX_NUMBER_DIGITS` characters,
  each in one line, before Python's own limits raise RecursionError or ValueError.
Here, beside `output_file`, because every package reads files and `search_spaces` is the one
they all import.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from search_spaces.printable import has_control, printable

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_NUMBER_DIGITS",
    "InputFileError",
    "check_input_file",
    "parse_json",
    "read_json",
]

MAX_JSON_BYTES = 64 * 2**20  # the largest predictor file written is under 1 MiB
MAX_JSON_DEPTH = 64  # plans nest 4 deep, predictors 6
MAX_NUMBER_DIGITS = 100  # a float's repr is at most 24 characters

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


class InputFileError(ValueError):
    """An input file that cannot or must not be read; the message says what to do."""


def check_input_file(path: str | Path, what: str = "input file") -> Path:
    """`path`, if it names a regular file that can be read.

    Args:
        path: the file.
        what: how messages name it ("--plan", "the predictor file").

    Raises:
        InputFileError: the path has control characters, does not exist, or is a directory, a
            device, a pipe or another file that is not a regular one.
    """
    text = os.fspath(path)
    if has_control(text):
        raise InputFileError(f"{what} {printable(text)}: a path with control characters; rename it")
    path = Path(text)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputFileError(f"{what} {path} does not exist") from None
    except OSError as error:
        raise InputFileError(f"{what} {path}: {error.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputFileError(f"{what} {path} is a directory; give a file")
    if not stat.S_ISREG(info.st_mode):
        raise InputFileError(
            f"{what} {path} is a device, a pipe or another special file, not a regular file; "
            "give a file"
        )
    return path


def read_json(
    path: str | Path,
    what: str = "JSON file",
    *,
    max_bytes: int = MAX_JSON_BYTES,
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
) -> Any:
    """The JSON document in `path`, read within the limits of the module docstring.

    Raises:
        InputFileError: the file is refused (`check_input_file`), larger than `max_bytes`,
            unreadable, not UTF-8, or not JSON within the limits.
    """
    path = check_input_file(path, what)
    size = path.stat().st_size
    if size > max_bytes:
        raise InputFileError(
            f"{what} {path} is {size:,} bytes, more than the {max_bytes:,} a JSON file may have"
        )
    try:
        raw = path.read_bytes()
        text = raw.decode()
    except OSError as error:
        raise InputFileError(f"cannot read {what} {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise InputFileError(f"{what} {path} is not UTF-8 text; give a JSON file") from None
    try:
        return parse_json(text, object_pairs_hook=object_pairs_hook)
    except InputFileError as error:
        raise InputFileError(f"{what} {path}: {error}") from None


def parse_json(
    text: str, *, object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None
) -> Any:
    """`json.loads(text)` that refuses, in one line, what would exhaust Python's limits.

    Raises:
        InputFileError: not valid JSON, nested deeper than `MAX_JSON_DEPTH`, or a number longer
            than `MAX_NUMBER_DIGITS` characters.
    """
    depth = _nesting_depth(text.encode())
    if depth > MAX_JSON_DEPTH:
        raise InputFileError(f"JSON nested {depth} levels deep; at most {MAX_JSON_DEPTH} are read")
    try:
        return json.loads(
            text,
            object_pairs_hook=object_pairs_hook,
            parse_int=_number(int),
            parse_float=_number(float),
        )
    except json.JSONDecodeError as error:
        raise InputFileError(
            f"not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})"
        ) from None
    except RecursionError:  # past the depth scan (brackets it could not see): still one line
        raise InputFileError("JSON nested too deeply to read") from None


def _nesting_depth(raw: bytes) -> int:
    """The deepest bracket nesting in a JSON text, strings left out."""
    import numpy as np

    bare = np.frombuffer(_STRING.sub(b'""', raw), dtype=np.uint8)
    steps = np.zeros(len(bare), dtype=np.int64)
    steps[(bare == ord("[")) | (bare == ord("{"))] = 1
    steps[(bare == ord("]")) | (bare == ord("}"))] = -1
    return int(np.cumsum(steps).max(initial=0))


def _number(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if len(text) > MAX_NUMBER_DIGITS:
            raise InputFileError(
                f"a number of {len(text):,} characters; at most {MAX_NUMBER_DIGITS} are read"
            )
        return kind(text)

    return parse
