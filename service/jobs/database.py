"""The job store's two databases behind one small interface: SQLite (one host, the default) and
Postgres (several hosts, when ``PROMPTSERVE_DATABASE_URL`` names one).

The job store writes plain SQL with ``?`` placeholders; `Postgres` rewrites them to psycopg's
``%s``. Plain SQL with psycopg 3 rather than a queue library: the job store already is a small,
tested state machine (states, events, cancel flags, idempotency keys, retention), and a queue
library would hold a second copy of every job with its own states. The few statements that
differ between the two (how a transaction takes its lock, how the next queued job is claimed)
are spelled by each database class. Neither class imports torch or a web framework.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BUSY_TIMEOUT_S = 30.0
PG_SCHEMA_LOCK = 0x70726F6D  # advisory lock id: one process creates the tables at a time


def _columns(rows: list[Any]) -> list[str]:
    return [str(row["name"]) for row in rows]


SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- creation order, the list cursor
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,                      -- JSON: what to train (a JobSpec)
    idempotency_key TEXT UNIQUE,
    fingerprint TEXT NOT NULL,               -- hash of the request, to compare repeats
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    progress TEXT,                           -- JSON, while running and after
    result TEXT,                             -- JSON, on success
    error TEXT,                              -- JSON {reason, message}, on failure
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,                             -- the job's process, while running
    worker TEXT,                             -- the id of the runner holding the job's lease
    lease_until REAL,                        -- UNIX time the lease runs out unless renewed
    attempts INTEGER NOT NULL DEFAULT 0      -- how many times a runner has claimed it
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    at REAL NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
"""

# columns added after the first release: an older jobs.db gains them on open
LEASE_COLUMNS = {
    "worker": "TEXT",
    "lease_until": "REAL",
    "attempts": "INTEGER NOT NULL DEFAULT 0",
}

# --- added columns, not yet in the CREATE TABLEs above or below: every database gains them on
# open (the migration runner's `add_column(3, "jobs", "owner", "TEXT")`) ---
ADDED_COLUMNS = {"owner": "TEXT"}  # the name of the API key that started the job

POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    fingerprint TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    progress TEXT,
    result TEXT,
    error TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    worker TEXT,
    lease_until DOUBLE PRECISION,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE TABLE IF NOT EXISTS events (
    seq BIGSERIAL PRIMARY KEY,
    job_id TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
"""


class Sqlite:
    """A SQLite file in WAL mode: readers run while one writer writes; a write transaction
    takes the lock at BEGIN IMMEDIATE, so two processes never claim one job."""

    # the oldest queued job; the caller runs it inside `transaction()`, which holds the lock
    next_queued = "SELECT * FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1"
    # running jobs whose lease ran out, locked by the same transaction
    expired_leases = "SELECT * FROM jobs WHERE state = 'running' AND lease_until < ? ORDER BY seq"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.locator = str(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: set once per database file
            db.executescript(SQLITE_SCHEMA)  # type: ignore[attr-defined]
            have = set(_columns(db.execute("PRAGMA table_info(jobs)").fetchall()))
            for name, kind in (LEASE_COLUMNS | ADDED_COLUMNS).items():
                if name not in have:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")

    @contextmanager
    def connect(self) -> Iterator[Any]:
        # a connection per call: cheap, and one must not cross threads or processes
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
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

    next_queued = (
        "SELECT * FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED"
    )
    expired_leases = (
        "SELECT * FROM jobs WHERE state = 'running' AND lease_until < ? ORDER BY seq "
        "FOR UPDATE SKIP LOCKED"
    )

    def __init__(self, url: str) -> None:
        import psycopg  # only for a cluster: the one-host default needs no Postgres driver

        self._psycopg = psycopg
        self.url = url
        self.locator = url
        self.path = None
        with self.transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(?)", (PG_SCHEMA_LOCK,))
            db.conn.execute(POSTGRES_SCHEMA)  # several statements: no parameters allowed
            for name, kind in ADDED_COLUMNS.items():
                db.execute(f"ALTER TABLE jobs ADD COLUMN IF NOT EXISTS {name} {kind}")

    @contextmanager
    def connect(self) -> Iterator[_PgConnection]:
        from psycopg.rows import dict_row

        with self._psycopg.connect(self.url, autocommit=True, row_factory=dict_row) as conn:
            yield _PgConnection(conn)

    @contextmanager
    def transaction(self) -> Iterator[_PgConnection]:
        from psycopg.rows import dict_row

        with (
            self._psycopg.connect(self.url, row_factory=dict_row) as conn,
            conn.transaction(),
        ):
            yield _PgConnection(conn)


Database = Sqlite | Postgres


def open_database(locator: str | Path) -> Database:
    """`locator` is a ``postgresql://`` URL or the path of a SQLite file."""
    text = str(locator)
    if text.startswith(("postgresql://", "postgres://")):
        return Postgres(text)
    return Sqlite(Path(text))
