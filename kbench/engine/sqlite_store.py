"""SQLite tracking stores shared by processes: created and migrated under a file lock beside the database, switched
to WAL and opened with a busy timeout, so that invocations and trials starting or writing together wait for each
other instead of failing (MLflow's migration of a new store is not safe to run twice at once)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from filelock import FileLock

from kbench.core.tracking_store import sqlite_path

BUSY_TIMEOUT_MS = 60_000  # how long a connection waits for another one's write


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """For a SQLite ``uri``: the block (which opens the store, creating and migrating it if new) under the lock file
    beside the database; the database is in WAL mode afterwards. Other URIs: the block as it is."""
    database = sqlite_path(uri)
    if database is None or str(database) in ("", ":memory:"):
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    wait_when_busy()
    with FileLock(f"{database}.lock"):
        yield
        with sqlite3.connect(database, timeout=BUSY_TIMEOUT_MS / 1000) as db:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")  # kept by the file: one switch is enough
        db.close()


def wait_when_busy() -> None:
    """Every SQLite connection SQLAlchemy (hence MLflow) opens in this process waits up to ``BUSY_TIMEOUT_MS``."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "connect", _busy_timeout):
        event.listen(Engine, "connect", _busy_timeout)


def _busy_timeout(connection: Any, _record: Any) -> None:
    if isinstance(connection, sqlite3.Connection):
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
