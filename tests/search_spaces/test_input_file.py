"""Input files are checked before they are read, and read within limits; outputs never overwrite
inputs; names with control characters print on one line."""

from __future__ import annotations

import os

import pytest

from search_spaces.input_file import (
    MAX_JSON_DEPTH,
    InputFileError,
    check_input_file,
    parse_json,
    read_json,
)
from search_spaces.output_file import OutputFileError, check_distinct_files, check_output_path
from search_spaces.printable import printable


def test_special_files_and_directories_are_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo.json")
    for path, says in (
        ("/dev/zero", "special file"),
        (tmp_path / "fifo.json", "special file"),
        (tmp_path, "directory"),
        (tmp_path / "nothere.json", "does not exist"),
        (str(tmp_path / "a\nb.json"), "control characters"),
    ):
        with pytest.raises(InputFileError, match=says):
            check_input_file(path, "--plan")


def test_json_nesting_and_long_numbers_are_refused_in_one_line():
    with pytest.raises(InputFileError, match="nested 100000 levels"):
        parse_json("[" * 100_000 + "]" * 100_000)
    assert parse_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH) is not None
    assert parse_json('{"a": "[[[[[[" }') == {"a": "[[[[[["}  # brackets in strings don't count
    with pytest.raises(InputFileError, match="5,001 characters"):
        parse_json('{"n": 1' + "0" * 5000 + "}")
    with pytest.raises(InputFileError, match="not valid JSON"):
        parse_json("{")


def test_a_json_file_larger_than_the_cap_is_refused_unread(tmp_path):
    path = tmp_path / "huge.json"
    with open(path, "wb") as huge:
        huge.truncate(2**20)
    with pytest.raises(InputFileError, match="1,048,576 bytes"):
        read_json(path, "plan file", max_bytes=2**19)


def test_an_output_that_is_an_input_is_refused_by_any_name(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    (tmp_path / "link.json").symlink_to(plan)
    os.link(plan, tmp_path / "hard.json")
    (tmp_path / "sub").mkdir()
    for out in (plan, tmp_path / "sub" / ".." / "plan.json", tmp_path / "hard.json"):
        with pytest.raises(OutputFileError, match=r"--out .* is the same file as --plan"):
            check_distinct_files({"--out": out}, {"--plan": tmp_path / "link.json"})
    with pytest.raises(OutputFileError, match=r"--trials-csv .* same file as --out"):
        check_distinct_files({"--out": "a.json", "--trials-csv": "a.json"}, {})
    check_distinct_files({"--out": tmp_path / "new.json", "--plot": None}, {"--plan": plan})


def test_output_paths_with_control_characters_are_refused(tmp_path):
    with pytest.raises(OutputFileError, match=r"new\\nline"):
        check_output_path(tmp_path / "new\nline.json", "--out")
    assert not list(tmp_path.iterdir())


def test_printable_escapes_control_characters_only():
    assert printable("stem.0\ncompplan: ok") == "stem.0\\ncompplan: ok"
    assert printable("a\x1b[2Jb\u2028") == "a\\x1b[2Jb\\u2028"
    assert printable("d̃ × résumé") == "d̃ × résumé"
