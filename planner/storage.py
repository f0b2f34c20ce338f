"""Where studies are kept: Optuna storages opened from the URLs users write.

- "sqlite:///file.db" (the embedded default), any SQLAlchemy URL (postgresql+psycopg2://...);
- "journal:PATH", or a path ending in .log or .journal: an Optuna journal file;
- "memory": this process only (benchmarks, throwaway searches).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from planner.errors import PlannerError

__all__ = ["CONNECT_TIMEOUT_S", "DEFAULT_STORAGE", "open_storage"]

DEFAULT_STORAGE = "sqlite:///compplan-studies.db"
CONNECT_TIMEOUT_S = 5  # seconds a database server has to answer


def open_storage(url: str):
    """An Optuna storage for `url` (see the module docstring).

    Raises:
        PlannerError: the URL names no storage Optuna can open, with what to write instead.
    """
    import optuna

    text = str(url)
    if text == "memory":
        return optuna.storages.InMemoryStorage()
    journal = text[len("journal:") :] if text.startswith("journal:") else None
    if journal is None and text.endswith((".log", ".journal")) and "://" not in text:
        journal = text
    if journal is not None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(journal).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(journal))
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
        return optuna.storages.RDBStorage(
            text, engine_kwargs=engine_kwargs, heartbeat_interval=None
        )
    except Exception as error:  # SQLAlchemy's errors: bad dialect, driver, host, file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if isinstance(error, ModuleNotFoundError):
            reason += " (pip install psycopg2-binary for postgresql+psycopg2://)"
        raise PlannerError(
            f"cannot open storage '{text}': {reason} (SQLite: sqlite:///path/to/file.db; "
            "PostgreSQL: postgresql+psycopg2://user:password@host:5432/db)"
        ) from None
