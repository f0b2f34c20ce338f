"""A throwaway PostgreSQL server on loopback, started and stopped by the tests themselves.

`running_postgres()` runs `initdb` into a fresh folder under the system temp folder (one the
server's user can reach: pytest's own are private to root), starts the server on a free port with
trust authentication on 127.0.0.1 and its socket in that folder, yields its SQLAlchemy URL, then
stops it with `pg_ctl stop` on the same data folder (the server's own pid file), never by name,
and removes the folder.
PostgreSQL refuses to run as root, so as root the server runs as the `postgres` (or `nobody`)
user. The binaries come from PATH or Debian's /usr/lib/postgresql/<version>/bin (`make test`
installs them with apt where they are missing).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["postgres_binaries", "running_postgres"]


def postgres_binaries() -> Path:
    """The folder holding initdb and pg_ctl."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if versions:
        return Path(versions[-1]).parent
    raise RuntimeError(
        "PostgreSQL is not installed: `make test` installs it (apt-get install postgresql), or "
        "install it by hand"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _runner(folder: Path) -> list[str]:
    """The command prefix that runs a server program as a user PostgreSQL accepts."""
    if os.geteuid() != 0:
        return []
    for user in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            continue
        for path in (folder, *folder.rglob("*")):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return ["runuser", "-u", user, "--"]
    raise RuntimeError("running as root, and there is no 'postgres' or 'nobody' user to run as")


@contextlib.contextmanager
def running_postgres() -> Iterator[str]:
    """Start a server; yields `postgresql+psycopg2://postgres@127.0.0.1:PORT/postgres`."""
    binaries = postgres_binaries()
    folder = Path(tempfile.mkdtemp(prefix="compplan-postgres-"))
    data = folder / "data"
    port = _free_port()
    as_user = _runner(folder)
    subprocess.run(
        [*as_user, binaries / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=200"
    log = folder / "server.log"
    log.touch()
    _runner(folder)  # the log file too
    subprocess.run(
        [*as_user, binaries / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, binaries / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)
