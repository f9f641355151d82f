"""Schema versions of the job database, and the runner that applies them at start-up.

A database records the migrations it has in ``schema_migrations`` (version, name, applied_at).
Opening one (`migrate`) takes the schema lock (SQLite ``BEGIN IMMEDIATE``, Postgres
``pg_advisory_xact_lock``), reads its version and applies each later migration in a transaction
of its own, so processes that start together apply each migration once, and a migration that
fails leaves the version it started from. A database newer than this code raises
`SchemaTooNewError`: a release never writes a schema it does not know. A database written before
versions existed (tables, no ``schema_migrations``) is adopted: its columns say which migrations
it has.

Our own runner rather than yoyo-migrations or alembic: see docs/operations/upgrades.md.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Dialect = Literal["sqlite", "postgres"]
PG_SCHEMA_LOCK = 0x70726F6D  # advisory lock id: one process migrates at a time
POSTGRES_TYPES = {
    "REAL": "DOUBLE PRECISION",
    "INTEGER PRIMARY KEY AUTOINCREMENT": "BIGSERIAL PRIMARY KEY",
}
LEASE_COLUMNS = ("worker", "lease_until", "attempts")  # what migration 2 added
VERSIONS_TABLE = (
    "CREATE TABLE schema_migrations "
    "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
)


class SchemaError(Exception):
    """The job database's schema cannot be brought to this release's."""


class SchemaTooNewError(SchemaError):
    """The database was migrated by a newer release than this one."""


@dataclass(frozen=True)
class Migration:
    """One step of the schema: statements for each engine, applied in one transaction."""

    version: int
    name: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]

    def statements(self, dialect: Dialect) -> tuple[str, ...]:
        return self.sqlite if dialect == "sqlite" else self.postgres


def add_column(version: int, table: str, column: str, kind: str) -> Migration:
    """The common migration: one new column, its type written as SQLite's (``REAL`` becomes
    ``DOUBLE PRECISION`` on Postgres)."""
    statement = f"ALTER TABLE {table} ADD COLUMN {column} "
    return Migration(
        version, f"{table}.{column}", (statement + kind,), (statement + _postgres(kind),)
    )


def _postgres(sql: str) -> str:
    for sqlite_type, postgres_type in POSTGRES_TYPES.items():
        sql = re.sub(rf"\b{sqlite_type}\b", postgres_type, sql)
    return sql


def _both(*statements: str) -> dict[str, tuple[str, ...]]:
    return {"sqlite": statements, "postgres": tuple(_postgres(s) for s in statements)}


# the first release's tables (0.1, SQLite only)
JOBS_V1 = """CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    fingerprint TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    progress TEXT,
    result TEXT,
    error TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    pid INTEGER
)"""
EVENTS_V1 = """CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    at REAL NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT
)"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "jobs and events",
        **_both(JOBS_V1, EVENTS_V1, "CREATE INDEX events_by_job ON events (job_id, seq)"),
    ),
    Migration(
        2,
        "job leases",
        **_both(
            "ALTER TABLE jobs ADD COLUMN worker TEXT",
            "ALTER TABLE jobs ADD COLUMN lease_until REAL",
            "ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
        ),
    ),
    # Postgres databases made before versions already have it (IF NOT EXISTS), SQLite ones not
    Migration(
        3, "jobs by state", **_both("CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq)")
    ),
    add_column(4, "jobs", "owner", "TEXT"),  # the name of the API key that started the job
)


class Database(Protocol):
    """What the runner needs of `service.jobs.database`'s classes."""

    @property
    def dialect(self) -> Dialect: ...

    @property
    def locator(self) -> str: ...

    def transaction(self) -> Any: ...


def migrate(database: Database, migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    """Bring `database` to the newest of `migrations`; returns its version."""
    latest = migrations[-1].version
    while True:
        with database.transaction() as db:
            if database.dialect == "postgres":
                db.execute("SELECT pg_advisory_xact_lock(?)", (PG_SCHEMA_LOCK,))
            current = _version(db, database.dialect)
            if current > latest:
                raise SchemaTooNewError(
                    f"the job database {describe(database.locator)} is at schema version "
                    f"{current}, newer than this release knows ({latest}): run the release "
                    "that upgraded it, or restore the backup taken before the upgrade"
                )
            pending = [m for m in migrations if m.version > current]
            if not pending:
                return current
            _apply(db, database.dialect, pending[0])


def _apply(db: Any, dialect: Dialect, migration: Migration) -> None:
    for statement in migration.statements(dialect):
        db.execute(statement)
    db.execute(
        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
        (migration.version, migration.name, time.time()),
    )


def _version(db: Any, dialect: Dialect) -> int:
    """The database's version; a database without versions is adopted at the one its tables
    show (inside the caller's locked transaction)."""
    if not _columns(db, dialect, "schema_migrations"):
        adopted = _legacy_version(_columns(db, dialect, "jobs"))
        db.execute(VERSIONS_TABLE if dialect == "sqlite" else _postgres(VERSIONS_TABLE))
        for migration in MIGRATIONS[:adopted]:  # the versions before schema_migrations
            db.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, f"{migration.name} (found)", time.time()),
            )
    row = db.execute("SELECT MAX(version) AS version FROM schema_migrations").fetchone()
    return int(row["version"] or 0)


def _legacy_version(columns: set[str]) -> int:
    """Which migrations a jobs table from before schema versions has: 0 (none), 1, 2."""
    if not columns:
        return 0
    leases = [name for name in LEASE_COLUMNS if name in columns]
    if not leases:
        return 1
    if len(leases) < len(LEASE_COLUMNS):
        raise SchemaError(
            f"the jobs table has only some of the lease columns ({', '.join(leases)}): "
            "it was changed by hand or an upgrade stopped half-way; add the others "
            f"({', '.join(sorted(set(LEASE_COLUMNS) - set(leases)))}) and start again"
        )
    return 2


def _columns(db: Any, dialect: Dialect, table: str) -> set[str]:
    """The columns of `table`; empty when there is no such table."""
    if dialect == "sqlite":
        rows = db.execute(f"PRAGMA table_info({table})").fetchall()
    else:
        rows = db.execute(
            "SELECT column_name AS name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ?",
            (table,),
        ).fetchall()
    return {str(row["name"]) for row in rows}


def describe(locator: str) -> str:
    """A database locator fit for a message: a URL's password left out."""
    return re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", locator)
