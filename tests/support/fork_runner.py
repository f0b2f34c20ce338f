"""Run many `compplan` commands fast, each in a process of its own.

A fresh `python -m planner.cli` spends about 2.5 s importing torch, Optuna and the rest before it
reads its first argument; a sweep of 250 bad inputs would spend ten minutes on that alone.
`ForkRunner` starts one server process that imports all of it once and never runs a torch
operation (so no thread pool exists when it forks); each command is then a `fork()` of it that
changes to its folder, points its stdin at /dev/null and its stdout and stderr at files, applies
the command's resource limits, and runs `planner.cli.main` as the `compplan` entry point does
(`sys.exit(main())`: a `SystemExit` that escapes `main` decides the exit code, as it would for a
user). The child is a separate process, so a case can neither see nor change another's state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_SERVER = r"""
import json, os, resource, select, signal, sys, time, traceback

import torch, optuna, pandas, sqlalchemy  # imported once, before any fork
import planner.cli, planner.search, planner.compress, planner.measure
import engine.export, engine.task_spec, predictors.latency, predictors.profile, zoo
from planner.cli import main


def child(request, out, err):
    os.chdir(request["cwd"])
    null = os.open(os.devnull, os.O_RDONLY)
    for fd, source in ((0, null), (1, out), (2, err)):  # pipes: no file-size limit on them
        os.dup2(source, fd)
        os.close(source)
    if request.get("fsize") is not None:  # a full disk: a write past the limit fails (EFBIG)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (request["fsize"], request["fsize"]))
    try:
        code = main(request["argv"])
    except SystemExit as done:  # as the interpreter ends `sys.exit(main())`
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if not isinstance(done.code, int | None):
            print(done.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


sys.stdout.write("ready\n")
sys.stdout.flush()
for line in sys.stdin:
    request = json.loads(line)
    start = time.perf_counter()
    pipes = [os.pipe(), os.pipe()]
    pid = os.fork()
    if pid == 0:
        try:
            for read_end, _ in pipes:
                os.close(read_end)
            child(request, pipes[0][1], pipes[1][1])
        finally:
            os._exit(1)
    sinks = {}
    for (read_end, write_end), name in zip(pipes, ("stdout", "stderr")):
        os.close(write_end)
        sinks[read_end] = open(request[name], "wb")
    deadline = start + request["timeout"]
    status = None
    while sinks:  # copy the child's output until it closes both pipes
        ready, _, _ = select.select(list(sinks), [], [], 0.1)
        for fd in ready:
            chunk = os.read(fd, 65536)
            if chunk:
                sinks[fd].write(chunk)
            else:
                sinks.pop(fd).close()
                os.close(fd)
        if sinks and time.perf_counter() > deadline:
            os.kill(pid, signal.SIGKILL)
            status = "timeout"
            for fd, sink in sinks.items():
                sink.close()
                os.close(fd)
            sinks = {}
    raw = os.waitpid(pid, 0)[1]
    if status is None:
        status = os.waitstatus_to_exitcode(raw)
    reply = {"code": None if status == "timeout" else status,
             "seconds": time.perf_counter() - start}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
"""


@dataclass(frozen=True)
class Completed:
    """What one command did: its exit code (None: killed at its time limit), output, time."""

    code: int | None
    stdout: str
    stderr: str
    seconds: float


def environment() -> dict[str, str]:
    """The environment commands run in: one thread, no debug tracebacks, the repo importable."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("COMPPLAN_DEBUG", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


class ForkRunner:
    """A server process that forks one child per `run` (see the module docstring).

    Use it as a context manager; `close()` ends the server by closing its input.
    """

    def __init__(self) -> None:
        self._scratch = tempfile.TemporaryDirectory(prefix="compplan-fork-")
        self._server = subprocess.Popen(
            [sys.executable, "-c", _SERVER],
            cwd=REPO,
            env=environment(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self._server.stdout.readline().strip() != "ready":
            self.close()
            raise RuntimeError("the fork server did not start")

    def run(
        self, argv: list[str], cwd: Path, *, timeout: float = 120, fsize: int | None = None
    ) -> Completed:
        """Run `compplan ARGV` in `cwd`, at most `timeout` seconds; `fsize`: a file-size limit
        in bytes (a full disk)."""
        out = Path(self._scratch.name) / "stdout"
        err = Path(self._scratch.name) / "stderr"
        out.write_bytes(b"")
        err.write_bytes(b"")
        request = {
            "argv": argv,
            "cwd": str(cwd),
            "stdout": str(out),
            "stderr": str(err),
            "timeout": timeout,
            "fsize": fsize,
        }
        start = time.perf_counter()
        self._server.stdin.write(json.dumps(request) + "\n")
        self._server.stdin.flush()
        line = self._server.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server died running {argv}")
        reply = json.loads(line)
        read = lambda path: path.read_bytes().decode(errors="replace")  # noqa: E731
        seconds = max(reply["seconds"], time.perf_counter() - start)
        return Completed(reply["code"], read(out), read(err), seconds)

    def close(self) -> None:
        if self._server.poll() is None:
            self._server.stdin.close()
            try:
                self._server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait()
        self._scratch.cleanup()

    def __enter__(self) -> ForkRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
