"""Output files: refused when the path is no place for a new regular file, checked before the
work, and written whole or not at all (a kill or a full disk leaves the old file, no temporary)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from planner.cli import main
from search_spaces.output_file import OutputFileError, check_output_path, write_atomically

PRESET = ["preset", "--model", "zoo:digits", "--preset", "bits:8"]


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_a_directory_a_device_a_link_and_a_missing_folder_are_refused(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    (tmp_path / "link.json").symlink_to(target)
    cases = {
        tmp_path: "is a directory",
        "/dev/full": "device or another special file",
        tmp_path / "link.json": "is a symbolic link",
        tmp_path / "missing" / "plan.json": "does not exist; create it first",
    }
    for path, says in cases.items():
        with pytest.raises(OutputFileError, match=says):
            write_atomically(path, b"new")
    assert target.read_text() == "old"
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    assert check_output_path(tmp_path / "fresh.json") == tmp_path / "fresh.json"


@pytest.mark.parametrize(
    "command",
    [
        [*PRESET, "--out", "{out}"],
        ["apply", "--model", "zoo:digits", "--plan", "{plan}", "--out", "{out}", "--epochs", "0"],
        ["search", "--model", "zoo:digits", "--size-budget", "x25", "--out", "{out}"],
        ["search", "--model", "zoo:digits", "--size-budget", "x25", "--trials-csv", "{out}"],
        ["fit-latency", "{plan}", "--out", "{out}"],
        ["profile", "--model", "zoo:digits", "--out", "{out}"],
    ],
    ids=["preset", "apply", "search", "trials-csv", "fit-latency", "profile"],
)
@pytest.mark.parametrize("out", ["/dev/full", "link.csv", "folder.csv"])
def test_every_command_refuses_a_bad_output_before_any_work(command, out, tmp_path, capsys):
    plan = tmp_path / "plan.json"
    assert main([*PRESET, "--out", str(plan)]) == 0
    capsys.readouterr()
    (tmp_path / "link.csv").symlink_to(plan)
    (tmp_path / "folder.csv").mkdir()
    where = out if out.startswith("/") else str(tmp_path / out)
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    argv = [part.format(out=where, plan=plan) for part in command]
    if command[0] == "search":
        argv += ["--storage", storage, *([] if "--out" in argv else ["--out", str(tmp_path / "p")])]
    started = time.monotonic()
    code, err = _run(capsys, *argv)
    assert code == 2 and err.count("\n") == 1, err
    assert any(s in err for s in ("directory", "special file", "symbolic link", "suffix", ".csv"))
    assert time.monotonic() - started < 20  # refused up front, not after the work
    assert not (tmp_path / "studies.db").exists()  # no search ran
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    assert (tmp_path / "link.csv").is_symlink() and plan.is_file()


def test_the_new_file_has_the_umasks_mode(tmp_path):
    old = os.umask(0o027)
    try:
        path = write_atomically(tmp_path / "plan.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


_KILLED_WRITER = """
import sys, time
from pathlib import Path
from search_spaces.output_file import write_atomically

def chunks():
    yield b"half of the new file"
    Path(sys.argv[2]).write_text("writing")
    time.sleep(60)
    yield b"the other half"

write_atomically(sys.argv[1], chunks())
"""


def test_a_process_killed_while_writing_leaves_the_old_file_and_no_temporary(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    path, started = folder / "model.cpz", tmp_path / "started"
    path.write_bytes(b"the old file")
    writer = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path), str(started)],
        cwd=os.getcwd(),
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists()
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    assert path.read_bytes() == b"the old file"
    assert sorted(p.name for p in folder.iterdir()) == ["model.cpz"]


def test_a_full_disk_is_one_line_exit_2_and_the_old_file_stays(tmp_path):
    # A file-size limit fails writes with EFBIG, as a full disk fails them with ENOSPC.
    out = tmp_path / "plan.json"
    out.write_text("the old plan")
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        from planner.cli import main
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
        sys.exit(main({[*PRESET, "--out", str(out)]!r}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        timeout=300,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "cannot write" in done.stderr and "unchanged" in done.stderr
    assert out.read_text() == "the old plan"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]
