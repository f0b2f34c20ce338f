"""Where studies are kept: Optuna storages opened from the URLs users write.

- "sqlite:///file.db" (the embedded default), any SQLAlchemy URL (postgresql+psycopg2://...);
- "journal:PATH", or a path ending in .log or .journal: an Optuna journal file;
- "memory": this process only (benchmarks, throwaway searches).

A URL may hold a database password. It is used to connect and nowhere else: every message,
summary, plan provenance and stored study config shows `display_url(url)`, the URL with its
password masked.

`study_lock(storage, url, study)` is the one lock every process sharing a storage respects:
`flock` on a SQLite or journal file, an advisory lock on PostgreSQL (`pg_advisory_lock`) and
MySQL (`GET_LOCK`). The Optuna backend holds it to count a study's trials and add one in a
single step, so processes sharing a study stop at exactly the number of trials asked.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from planner.errors import PlannerError
from search_spaces.printable import has_control, printable

__all__ = [
    "CONNECT_TIMEOUT_S",
    "DEFAULT_STORAGE",
    "display_url",
    "open_storage",
    "storage_file",
    "study_lock",
]

DEFAULT_STORAGE = "sqlite:///compplan-studies.db"
CONNECT_TIMEOUT_S = 5  # seconds a database server has to answer


_MASK = "***"
# user:password@ in any URL, and password=... in its query (libpq takes both).
_PASSWORD_IN_AUTHORITY = re.compile(r"(?P<head>//[^/@:]*:)[^/]*(?P<at>@)")
_PASSWORD_IN_QUERY = re.compile(r"(?P<head>[?&](?:password|pass|pwd)=)[^&]*", re.IGNORECASE)


def display_url(url: str) -> str:
    """`url` as messages, summaries and stored documents show it: its password masked.

    "postgresql://compplan:S3cret@db:5432/studies" → "postgresql://compplan:***@db:5432/studies".
    Other storages ("memory", journal paths, SQLite files) are returned as they are.
    """
    text = str(url)
    if "://" not in text:
        return text
    text = _PASSWORD_IN_AUTHORITY.sub(rf"\g<head>{_MASK}\g<at>", text, count=1)
    return _PASSWORD_IN_QUERY.sub(rf"\g<head>{_MASK}", text)


def storage_file(url: str) -> Path | None:
    """The file a SQLite or journal URL keeps its studies in (None: a server, or memory)."""
    text = str(url)
    journal = _journal_path(text)
    return Path(journal) if journal is not None else _sqlite_path(text)


def _journal_path(text: str) -> str | None:
    journal = text[len("journal:") :] if text.startswith("journal:") else None
    if journal is None and text.endswith((".log", ".journal")) and "://" not in text:
        journal = text
    return journal


def _sqlite_path(text: str) -> Path | None:
    """The file of a SQLite URL (None: not SQLite, or in memory)."""
    if not text.startswith("sqlite:///"):
        return None
    name = text[len("sqlite:///") :].split("?", 1)[0]
    return None if name in ("", ":memory:") else Path(name)


def open_storage(url: str, *, create: bool = True, adopt: bool = False):
    """An Optuna storage for `url` (see the module docstring).

    Args:
        url: the storage URL.
        create: create a SQLite database or journal file that does not exist yet. Workers
            pass False: a misspelt path must be refused, not become an empty database.
        adopt: add Optuna's tables to a SQLite file that holds other tables (another
            program's database); without it such a file is refused, and left unchanged.

    Raises:
        PlannerError: the URL names no storage Optuna can open, with what to write instead;
            a file that does not exist (`create=False`), a directory or a special file; a
            SQLite file of another program's (without `adopt`); control characters. Messages
            name the file or the URL (its password masked). A file this call created is removed
            again when opening fails.
    """
    import optuna

    text = str(url)
    if has_control(text):
        raise PlannerError(
            f"storage '{printable(display_url(text))}' holds control characters (a newline?); "
            "write the URL on one line"
        )
    if text == "memory":
        return optuna.storages.InMemoryStorage()
    journal = _journal_path(text)
    file = storage_file(text)
    if file is not None and file.is_dir():
        raise PlannerError(
            f"storage '{display_url(text)}': {file} is a directory; name a file in it "
            f"(sqlite:///{file / 'studies.db'} or journal:{file / 'studies.log'})"
        )
    if file is not None and file.exists() and not file.is_file():
        raise PlannerError(
            f"storage '{display_url(text)}': {file} is a device, a pipe or another special file; "
            "name a regular file"
        )
    if not create and file is not None and not file.is_file():
        raise PlannerError(
            f"storage '{display_url(text)}': {file} does not exist; give the file the study "
            "was created in (`compplan search --trials 0` creates one)"
        )
    if journal is not None:
        return _journal_storage(Path(journal), text)
    if file is not None and not adopt:
        _check_sqlite_is_ours(file, text)
    if "://" not in text:
        raise PlannerError(
            f"storage '{text}' is not a URL: write sqlite:///{text} for a SQLite file, "
            f"journal:{text} for a journal file, or a SQLAlchemy URL"
        )
    engine_kwargs: dict[str, Any] = {}
    if text.startswith(("postgresql", "mysql")):
        # A wrong host must fail in seconds, not after the OS's TCP timeout (minutes).
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
        engine_kwargs["pool_pre_ping"] = True
    try:
        return _rdb_storage(text, engine_kwargs, file)
    except Exception as error:  # SQLAlchemy's errors: bad dialect, driver, host, file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        reason = _without_password(reason, text)
        if isinstance(error, ModuleNotFoundError):
            reason += " (pip install psycopg2-binary for postgresql+psycopg2://)"
        raise PlannerError(
            f"cannot open storage '{display_url(text)}': {reason} (SQLite: "
            "sqlite:///path/to/file.db; PostgreSQL: postgresql+psycopg2://user:password@host:5432/db)"
        ) from None


def _rdb_storage(text: str, engine_kwargs: dict[str, Any], file: Path | None):
    """Optuna's RDBStorage, safe when several processes open a new database at once.

    Opening a database Optuna has not seen creates its tables and stamps their version; two
    processes doing it together (two workers started on a fresh file) collide on that stamp. On
    a SQLite file the opening holds the file's lock (`study_lock`'s); elsewhere an opening that
    lost the race is retried, and then finds the tables made.
    """
    import optuna
    import sqlalchemy.exc

    def opened():
        return optuna.storages.RDBStorage(
            text, engine_kwargs=engine_kwargs, heartbeat_interval=None
        )

    if file is not None:
        with _removed_on_failure(file):
            fd = os.open(file, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                return opened()
            finally:
                os.close(fd)
    for wait in (0.5, 1.0):
        try:
            return opened()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            time.sleep(wait)  # another process is making the tables
    return opened()


def _journal_storage(path: Path, text: str):
    """Optuna's journal storage in `path`; a journal that cannot be created leaves no file."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _removed_on_failure(path):
            return JournalStorage(JournalFileBackend(str(path)))
    except OSError as error:
        raise PlannerError(
            f"cannot open storage '{display_url(text)}': {path}: {error.strerror or error}"
        ) from None


def _check_sqlite_is_ours(file: Path, text: str) -> None:
    """Refuse a SQLite file that holds tables but not Optuna's (another program's database);
    it is only read, so it is left as it was."""
    import sqlite3

    if not file.is_file() or file.stat().st_size == 0:
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{file}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    except sqlite3.Error as error:
        raise PlannerError(
            f"storage '{display_url(text)}': {file} is not a SQLite database ({error}); give "
            "another file, or a new one"
        ) from None
    tables = sorted(str(name) for (name,) in rows)
    if tables and "studies" not in tables:
        shown = ", ".join(printable(t) for t in tables[:8]) + (" ..." if len(tables) > 8 else "")
        raise PlannerError(
            f"storage '{display_url(text)}': {file} is another program's SQLite database "
            f"(tables {shown}, none of Optuna's); give a file of its own, or pass "
            "--storage-adopt to add the study's tables to it"
        )


@contextlib.contextmanager
def _removed_on_failure(file: Path) -> Iterator[None]:
    """Remove `file` if it did not exist before the block and the block fails."""
    existed = os.path.lexists(file)
    try:
        yield
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):
                os.unlink(file)
        raise


def _without_password(message: str, url: str) -> str:
    """`message` (a driver's error) with the URL's password masked, should the driver quote it."""
    message = message.replace(url, display_url(url))
    match = re.search(r"//[^/@:]*:([^/]*)@", url)
    return message.replace(match.group(1), _MASK) if match and match.group(1) else message


@contextlib.contextmanager
def study_lock(storage, url: str, study: str) -> Iterator[None]:
    """Hold `study`'s lock in the storage `url` names (see the module docstring) while the
    block runs; a storage only this process sees ("memory") needs none.

    Args:
        storage: the storage `open_storage(url)` returned (its engine takes database locks).
        url: its URL.
        study: the study's name (database locks are per study).
    """
    text = str(url)
    journal = _journal_path(text)
    file = Path(journal) if journal is not None else _sqlite_path(text)
    if file is not None:
        fd = os.open(file, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by close, or by the process's death
            yield
        finally:
            os.close(fd)
        return
    engine = getattr(storage, "engine", None)
    dialect = engine.dialect.name if engine is not None else None
    if dialect not in ("postgresql", "mysql"):
        yield
        return
    import sqlalchemy

    key = int.from_bytes(hashlib.sha256(f"compplan:{study}".encode()).digest()[:8], "big") >> 1
    take, give = {
        "postgresql": ("SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)"),
        "mysql": ("SELECT GET_LOCK(:name, -1)", "SELECT RELEASE_LOCK(:name)"),
    }[dialect]
    values = {"key": key, "name": f"compplan-{key:x}"}
    with engine.connect() as connection:  # a session lock: held until given back
        connection.execute(sqlalchemy.text(take), values)
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text(give), values)
