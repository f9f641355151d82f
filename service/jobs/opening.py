"""The job database as the job store sees it: opened when it can be, again after it could not,
and never the reason classification stops.

`JobDatabase` stands in for a `service.jobs.database.Database` (same `connect`, `transaction`
and statements). It opens the database when made, waiting at most OPEN_TIMEOUT_S for a lock, so
a locked or unreachable database delays start-up by seconds, not by the busy timeout. While it
cannot be opened, or its last call failed with a storage fault (`service.faults`), every call
raises the fault's service error at once (`jobs_unavailable`, `storage_unavailable`,
`storage_full`, with Retry-After), the service still classifies, and the next call after
RETRY_OPEN_S tries again. The first failure and the recovery are logged, one line each.

A SQLite file that SQLite finds damaged (truncated, overwritten: "file is not a database",
"database disk image is malformed", or a failed ``PRAGMA quick_check``) is moved aside to
``jobs.db.corrupt-<UTC time>`` (with its ``-wal`` and ``-shm`` files), which is logged as an
ERROR naming the file, and a new, empty database replaces it: the old jobs stay readable in the
moved file, never silently dropped. A zero-length file beside job folders (nothing to move, but
a database with jobs was expected) is logged as a WARNING.
Processes that find one damaged file at once agree under a lock file (``jobs.db.lock``) on who
moves it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from promptserve.service import faults
from promptserve.service.errors import ServiceError, fault_error
from promptserve.service.jobs.database import (
    BUSY_TIMEOUT_S,
    Database,
    Postgres,
    Sqlite,
    is_postgres,
    open_database,
)

log = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 3.0  # the most an open waits for a lock: start-up is never held longer
RETRY_OPEN_S = 2.0  # while unavailable, calls within this time answer at once without trying


class DamagedDatabaseError(Exception):
    """SQLite's quick check found the file damaged."""


class JobDatabase:
    """The job database at `locator` (a SQLite path or a ``postgresql://`` URL); each call
    waits at most `timeout_s` for a lock or a connection."""

    def __init__(self, locator: str | Path, *, timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.kind: type[Sqlite] | type[Postgres] = Postgres if is_postgres(locator) else Sqlite
        self.locator = str(locator)
        self.path = None if is_postgres(locator) else Path(locator)
        self.dialect = self.kind.dialect
        self.next_queued = self.kind.next_queued
        self.expired_leases = self.kind.expired_leases
        self.timeout_s = timeout_s
        self._db: Database | None = None
        self._fault: faults.Fault | None = None  # of the last call, None once one succeeds
        self._next_try = 0.0  # monotonic time the next open may be tried
        self._lock = threading.Lock()
        with contextlib.suppress(ServiceError):
            self.database()

    @property
    def unavailable(self) -> str | None:
        """Why jobs cannot be served now (None: they can), for readiness."""
        return self._fault.message if self._fault is not None else None

    def database(self) -> Database:
        """The open database; raises the service error of its fault while it is unavailable."""
        with self._lock:
            if self._db is not None:
                return self._db
            if self._fault is not None and time.monotonic() < self._next_try:
                raise fault_error(self._fault)
            try:
                self._db = self._open()
            except Exception as exc:
                self._next_try = time.monotonic() + RETRY_OPEN_S
                raise self._failed(exc, "open") from exc
            self._recovered()
            return self._db

    @contextmanager
    def connect(self) -> Iterator[Any]:
        with self._calling(), self.database().connect() as db:
            yield db

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        with self._calling(), self.database().transaction() as db:
            yield db

    @contextmanager
    def _calling(self) -> Iterator[None]:
        try:
            yield
        except ServiceError:
            raise
        except Exception as exc:
            raise self._failed(exc, "call") from exc
        if self._fault is not None:
            self._recovered()

    def _failed(self, exc: Exception, what: str) -> Exception:
        """The service error to raise for `exc` (itself when it is no storage fault)."""
        fault = faults.classify(exc)
        if fault is None:
            return exc
        if self._fault is None:  # the first failure of an outage: one line
            log.warning(
                "job database %s unavailable (%s: %s): /adapt and /jobs answer %d %s until it "
                "answers again",
                self._shown(),
                type(exc).__name__,
                exc,
                fault.status,
                fault.code,
            )
        self._fault = fault
        return fault_error(fault)

    def _recovered(self) -> None:
        if self._fault is not None:
            log.warning("job database %s is available again", self._shown())
        self._fault = None

    def _shown(self) -> str:
        return str(self.path) if self.path is not None else "(DATABASE_URL)"

    def _open(self) -> Database:
        timeout = min(self.timeout_s, OPEN_TIMEOUT_S)
        if self.path is None:
            db = open_database(self.locator, timeout_s=timeout)
            assert isinstance(db, Postgres)
            db.connect_timeout = max(1, round(self.timeout_s))
            return db
        sqlite = open_sqlite(self.path, timeout)
        sqlite.timeout_s = self.timeout_s
        return sqlite


def open_sqlite(path: Path, timeout_s: float) -> Sqlite:
    """The SQLite job database at `path`; a damaged one is moved aside and replaced."""
    if path.is_file() and path.stat().st_size == 0 and _job_folders(path.parent):
        # (an empty file beside no job folders is one a process opening it too just made)
        log.warning(
            "job database %s is an empty file, though job folders lie beside it: starting a "
            "new job database there; the jobs of the earlier one are lost (their upload "
            "folders are kept)",
            path,
        )
    try:
        return _checked(path, timeout_s)
    except (DamagedDatabaseError, sqlite3.DatabaseError) as exc:
        if not _is_damage(exc):
            raise
        path.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(path.with_name(path.name + ".lock")):
            try:  # another process may have replaced it while this one waited for the lock
                return _checked(path, timeout_s)
            except (DamagedDatabaseError, sqlite3.DatabaseError) as again:
                if not _is_damage(again):
                    raise
                moved = _move_aside(path)
                log.error(
                    "job database %s is damaged (%s): moved aside to %s, and a new, empty job "
                    "database replaces it; the earlier jobs are only in the moved file",
                    path,
                    again,
                    moved,
                )
            return _checked(path, timeout_s)


def _job_folders(root: Path) -> bool:
    return any(entry.is_dir() for entry in root.iterdir())


def _is_damage(exc: Exception) -> bool:
    return isinstance(exc, DamagedDatabaseError) or faults.classify(exc) is faults.DAMAGED


def _checked(path: Path, timeout_s: float) -> Sqlite:
    db = Sqlite(path, timeout_s=timeout_s)
    problems = db.problems()
    if problems:
        raise DamagedDatabaseError("; ".join(problems[:3]))
    return db


def _move_aside(path: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():  # one damaged the same second before: never overwrite it
        target, n = path.with_name(f"{path.name}.corrupt-{stamp}-{n}"), n + 1
    for suffix in ("", "-wal", "-shm"):  # the WAL keeps its name's pairing with the moved file
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + suffix).rename(target.with_name(target.name + suffix))
    return target


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
