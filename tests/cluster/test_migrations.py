"""Schema versions of the job database on SQLite and a real Postgres: databases written by the
previous releases' DDL (below, as those releases wrote it) are upgraded with their rows, a fresh
one gets every migration, processes starting together apply each once, a failing migration
changes nothing, and a database newer than the code is refused (by the CLI too)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from promptserve.service.jobs.database import open_database
from promptserve.service.jobs.migrations import (
    MIGRATIONS,
    Migration,
    SchemaError,
    SchemaTooNewError,
    add_column,
    describe,
    migrate,
)
from promptserve.service.jobs.spec import dump_spec
from promptserve.service.jobs.store import JobStore
from tests.cluster.servers import Postgres, fresh_database
from tests.service.jobs.helpers import SPEC
from tests.waiting import wait_until

LATEST = MIGRATIONS[-1].version

# 0.1: the first release (SQLite only, service/jobs/records.py)
SQLITE_FIRST_RELEASE = """
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
    pid INTEGER                              -- the worker process, while running
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

# the release before schema versions: a first-release jobs.db gained these on open
SQLITE_LEASES = """
ALTER TABLE jobs ADD COLUMN worker TEXT;
ALTER TABLE jobs ADD COLUMN lease_until REAL;
ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
"""

# the release before schema versions, on Postgres (its first there)
POSTGRES_LEASES_RELEASE = """
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

OLD_ROWS = [
    "INSERT INTO jobs (id, state, spec, fingerprint, created_at) "
    f"VALUES ('old-queued', 'queued', '{dump_spec(SPEC)}', 'f1', 1000.0)",
    "INSERT INTO jobs (id, state, spec, fingerprint, created_at, finished_at, result) "
    f"VALUES ('old-done', 'succeeded', '{dump_spec(SPEC)}', 'f2', 1001.0, 1002.0, "
    """'{"version": "3"}')""",
    "INSERT INTO events (job_id, at, level, message) VALUES ('old-done', 1002.0, 'info', 'done')",
]


@pytest.fixture(params=["sqlite", "postgres"])
def locator(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of either engine."""
    return empty_database(request.param, request, tmp_path / "jobs.db")


def empty_database(engine: str, request: pytest.FixtureRequest, path: Path) -> str:
    if engine == "sqlite":
        return str(path)
    server: Postgres = request.getfixturevalue("postgres")
    return fresh_database(server, f"m{uuid.uuid4().hex[:12]}")


def run_sql(locator: str, script: str) -> None:
    """Run DDL and inserts straight on the database, as an older release would have."""
    if locator.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(locator, autocommit=True) as conn:
            conn.execute(script.encode())  # bytes: several statements, no placeholders
        return
    with sqlite3.connect(locator) as db:
        db.executescript(script)


def query(locator: str, sql: str) -> list[tuple[Any, ...]]:
    if locator.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(locator) as conn:
            return [tuple(row) for row in conn.execute(sql).fetchall()]
    with sqlite3.connect(locator) as db:
        return [tuple(row) for row in db.execute(sql).fetchall()]


def versions(locator: str) -> list[tuple[int, str]]:
    return [
        (int(version), str(name))
        for version, name in query(locator, "SELECT version, name FROM schema_migrations")
    ]


def assert_old_rows_work(jobs: JobStore) -> None:
    done = jobs.get("old-done")
    assert done is not None
    assert (done.state, done.result, done.attempts) == ("succeeded", {"version": "3"}, 0)
    assert [event.message for event in jobs.events("old-done")] == ["done"]
    claimed = jobs.claim_next("host:1:a", lease_s=30)  # the lease columns, on an old row
    assert claimed is not None
    assert (claimed.id, claimed.runner, claimed.attempts) == ("old-queued", "host:1:a", 1)
    created, _ = jobs.create(SPEC, fingerprint="new")
    assert created.seq > done.seq


def test_a_first_release_sqlite_database_is_upgraded_with_its_rows(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.db")
    run_sql(path, SQLITE_FIRST_RELEASE + ";".join(OLD_ROWS))
    jobs = JobStore(path)
    assert versions(path) == [
        (1, "jobs and events (found)"),
        (2, "job leases"),
        (3, "jobs by state"),
        (4, "jobs.owner"),
    ]
    assert_old_rows_work(jobs)
    assert query(path, "SELECT name FROM sqlite_master WHERE name = 'jobs_by_state'")


def test_the_last_release_database_is_upgraded_on_both_engines(locator: str) -> None:
    if locator.startswith("postgresql://"):
        run_sql(locator, POSTGRES_LEASES_RELEASE + ";".join(OLD_ROWS))
    else:
        run_sql(locator, SQLITE_FIRST_RELEASE + SQLITE_LEASES + ";".join(OLD_ROWS))
    jobs = JobStore(locator)
    assert versions(locator) == [
        (1, "jobs and events (found)"),
        (2, "job leases (found)"),
        (3, "jobs by state"),
        (4, "jobs.owner"),
    ]
    assert_old_rows_work(jobs)


def test_a_fresh_database_gets_every_migration_and_reopens_unchanged(locator: str) -> None:
    jobs = JobStore(locator)
    first = query(locator, "SELECT version, name, applied_at FROM schema_migrations")
    assert [row[:2] for row in first] == [(m.version, m.name) for m in MIGRATIONS]
    job, _ = jobs.create(SPEC, fingerprint="f")
    JobStore(locator)
    JobStore(locator)
    assert query(locator, "SELECT version, name, applied_at FROM schema_migrations") == first
    assert jobs.claim_next("host:1:a", lease_s=30) == jobs.get(job.id)


def test_processes_starting_together_apply_each_migration_once(locator: str) -> None:
    starters = 6
    gate = threading.Barrier(starters)
    failures: list[BaseException] = []

    def start() -> None:
        gate.wait()
        try:
            open_database(locator)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=start) for _ in range(starters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []
    assert [v for v, _ in versions(locator)] == [m.version for m in MIGRATIONS]


def test_three_real_processes_starting_together_all_come_up(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    go = tmp_path / "go"
    code = (
        "import pathlib, sys, time\n"
        "from promptserve.service.jobs.store import JobStore\n"
        f"pathlib.Path({str(tmp_path)!r}, 'ready-' + sys.argv[1]).touch()\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.001)\n"
        f"JobStore({str(path)!r})\n"
    )
    starters = [
        subprocess.Popen([sys.executable, "-c", code, str(n)], stderr=subprocess.PIPE, text=True)
        for n in range(3)
    ]
    wait_until(lambda: len(list(tmp_path.glob("ready-*"))) == 3, timeout=120)
    go.touch()  # all three open the new database at once
    outcomes = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in starters]
    assert outcomes == [(0, "")] * 3
    assert [v for v, _ in versions(str(path))] == [m.version for m in MIGRATIONS]
    JobStore(path).create(SPEC, fingerprint="f")
    assert JobStore(path).claim_next("host:1:a", lease_s=30) is not None


def test_a_failing_migration_leaves_the_version_it_started_from(locator: str) -> None:
    database = open_database(locator)
    broken = Migration(
        LATEST + 1,
        "broken",
        sqlite=("ALTER TABLE jobs ADD COLUMN note TEXT", "ALTER TABLE nowhere ADD COLUMN x TEXT"),
        postgres=(
            "ALTER TABLE jobs ADD COLUMN note TEXT",
            "ALTER TABLE nowhere ADD COLUMN x TEXT",
        ),
    )
    with pytest.raises(Exception, match="nowhere"):
        migrate(database, (*MIGRATIONS, broken))
    assert max(v for v, _ in versions(locator)) == LATEST
    query(locator, "SELECT * FROM jobs")  # still readable
    with pytest.raises(Exception, match="note"):
        query(locator, "SELECT note FROM jobs")  # the first statement was rolled back too


def test_one_line_adds_a_column_and_older_code_then_refuses_the_database(locator: str) -> None:
    jobs = JobStore(locator)
    job, _ = jobs.create(SPEC, fingerprint="f")
    newer = (*MIGRATIONS, add_column(LATEST + 1, "jobs", "note", "TEXT"))
    assert migrate(jobs.db, newer) == LATEST + 1
    assert query(locator, f"SELECT id, note FROM jobs WHERE id = '{job.id}'") == [(job.id, None)]
    assert migrate(jobs.db, newer) == LATEST + 1  # the newer code reopens it
    with pytest.raises(SchemaTooNewError, match=rf"schema version {LATEST + 1}, newer than"):
        JobStore(locator)  # this release's code, on the newer release's database


def test_a_half_done_lease_upgrade_is_named_not_guessed(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.db")
    run_sql(path, SQLITE_FIRST_RELEASE + "ALTER TABLE jobs ADD COLUMN worker TEXT;")
    with pytest.raises(SchemaError, match="only some of the lease columns"):
        JobStore(path)
    assert query(path, "SELECT name FROM sqlite_master WHERE name = 'schema_migrations'") == []


def _too_new(locator: str) -> None:
    JobStore(locator)
    run_sql(
        locator,
        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, 'future', 0)",
    )


@pytest.mark.slow
@pytest.mark.parametrize(("command", "engine"), [("serve", "sqlite"), ("worker", "postgres")])
def test_the_cli_refuses_a_too_new_database_in_one_line(
    command: str, engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    locator = empty_database(engine, request, store / ".jobs" / "jobs.db")
    env = {**os.environ, "PROMPTSERVE_DEVICE": "cpu", "PROMPTSERVE_JOB_DEVICE": "cpu"}
    if engine == "postgres":
        env["PROMPTSERVE_DATABASE_URL"] = locator
    _too_new(locator)
    done = subprocess.run(
        [sys.executable, "-m", "promptserve.service.cli", command, "--store", str(store)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 4, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"promptserve {command}: the job database")
    assert "schema version 99" in lines[0]


def test_versions_count_up_from_one_and_messages_hide_passwords() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1))
    assert describe("postgresql://jobs:pw@db:5432/jobs") == "postgresql://jobs:***@db:5432/jobs"
    assert describe("/srv/store/.jobs/jobs.db") == "/srv/store/.jobs/jobs.db"
