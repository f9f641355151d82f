"""The job store's two databases behind one small interface: SQLite (one host, the default) and
Postgres (several hosts, when ``PROMPTSERVE_DATABASE_URL`` names one).

The job store writes plain SQL with ``?`` placeholders; `Postgres` rewrites them to psycopg's
``%s``. Plain SQL with psycopg 3 rather than a queue library: the job store already is a small,
tested state machine (states, events, cancel flags, idempotency keys, retention), and a queue
library would hold a second copy of every job with its own states. The few statements that
differ between the two (how a transaction takes its lock, how the next queued job is claimed)
are spelled by each database class. Opening one brings its schema to this release's
(`service.jobs.migrations`). Neither class imports torch or a web framework.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import tenacity

from promptserve.service.jobs.migrations import migrate

BUSY_TIMEOUT_S = 30.0  # how long a call waits for another process's lock (`timeout_s`)


class Sqlite:
    """A SQLite file in WAL mode: readers run while one writer writes; a write transaction
    takes the lock at BEGIN IMMEDIATE, so two processes never claim one job."""

    dialect: Literal["sqlite"] = "sqlite"
    # the oldest queued job; the caller runs it inside `transaction()`, which holds the lock
    next_queued = "SELECT * FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1"
    # running jobs whose lease ran out, locked by the same transaction
    expired_leases = "SELECT * FROM jobs WHERE state = 'running' AND lease_until < ? ORDER BY seq"

    def __init__(self, path: Path, *, timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.locator = str(self.path)
        self.timeout_s = timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._use_wal()
        migrate(self)

    def _use_wal(self) -> None:
        # Switching a new file to WAL needs it alone, and SQLite does not wait for that (the
        # busy timeout does not apply): processes opening one new file at once retry a while.
        for attempt in tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda exc: "locked" in str(exc)),
            wait=tenacity.wait_random(0.01, 0.1),
            stop=tenacity.stop_after_delay(self.timeout_s),
            reraise=True,
        ):
            with attempt, self.connect() as db:
                db.execute("PRAGMA journal_mode=WAL")  # persistent: set once per database file

    def problems(self) -> list[str]:
        """What SQLite's quick check finds wrong with the file (empty: nothing)."""
        with self.connect() as db:
            rows = db.execute("PRAGMA quick_check").fetchall()
        found = [str(row[0]) for row in rows]
        return [] if found == ["ok"] else found

    @contextmanager
    def connect(self) -> Iterator[Any]:
        # a connection per call: cheap, and one must not cross threads or processes
        db = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL stays consistent
            yield db
        finally:
            db.close()

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlocks
            try:
                yield db
            except BaseException:
                # a full disk or an I/O error may have ended the transaction already
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")


class _PgConnection:
    """A psycopg connection that takes the job store's ``?`` placeholders."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(sql.replace("?", "%s"), tuple(params))


class Postgres:
    """A Postgres database shared by every API process and job host of a cluster.

    Claims lock the row they take with ``FOR UPDATE SKIP LOCKED``: two runners asking at once
    get two different jobs, and neither waits for the other.
    """

    dialect: Literal["postgres"] = "postgres"
    next_queued = (
        "SELECT * FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED"
    )
    expired_leases = (
        "SELECT * FROM jobs WHERE state = 'running' AND lease_until < ? ORDER BY seq "
        "FOR UPDATE SKIP LOCKED"
    )

    def __init__(self, url: str, *, timeout_s: float = BUSY_TIMEOUT_S) -> None:
        import psycopg  # only for a cluster: the one-host default needs no Postgres driver

        self._psycopg = psycopg
        self.url = url
        self.locator = url
        self.path = None
        self.connect_timeout = max(1, round(timeout_s))  # libpq takes whole seconds
        migrate(self)

    def _connect(self, **options: Any) -> Any:
        from psycopg.rows import dict_row

        return self._psycopg.connect(
            self.url, row_factory=dict_row, connect_timeout=self.connect_timeout, **options
        )

    @contextmanager
    def connect(self) -> Iterator[_PgConnection]:
        with self._connect(autocommit=True) as conn:
            yield _PgConnection(conn)

    @contextmanager
    def transaction(self) -> Iterator[_PgConnection]:
        with self._connect() as conn, conn.transaction():
            yield _PgConnection(conn)


Database = Sqlite | Postgres


def is_postgres(locator: str | Path) -> bool:
    return str(locator).startswith(("postgresql://", "postgres://"))


def open_database(locator: str | Path, *, timeout_s: float = BUSY_TIMEOUT_S) -> Database:
    """`locator` is a ``postgresql://`` URL or the path of a SQLite file."""
    if is_postgres(locator):
        return Postgres(str(locator), timeout_s=timeout_s)
    return Sqlite(Path(locator), timeout_s=timeout_s)
