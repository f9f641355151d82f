"""The job store: few-shot tuning jobs and their events in SQLite (WAL), shared by processes.

The service process creates jobs, lists them and asks for cancellation; a worker process updates
its own job's progress and ends it. SQLite in WAL mode lets readers (every ``GET /jobs``) run
while a worker writes, and every state change is one conditional ``UPDATE`` (``... WHERE state =
'running'``), so two processes can never both move a job: a job cancelled while queued is never
started, and a worker cannot mark a job that the service already gave up on.

Each call opens its own short-lived connection (cheap; a connection must not cross threads or
processes), so a `JobStore` can be used from any thread and is picklable into a worker.
This module imports no torch and no web framework.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.jobs.records import (
    SCHEMA,
    TERMINAL,
    Event,
    IdempotencyMismatchError,
    Job,
    JobState,
    job_from_row,
    new_job_id,
)
from service.jobs.spec import JobSpec, dump_spec

__all__ = ["Event", "IdempotencyMismatchError", "Job", "JobState", "JobStore", "new_job_id"]

BUSY_TIMEOUT_S = 30.0


class JobStore:
    """Jobs in the SQLite database at `path` (created with its schema when missing)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: set once per database file
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL stays consistent
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlocks
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # --- creating and reading ------------------------------------------------------------

    def create(
        self,
        spec: JobSpec,
        *,
        fingerprint: str,
        idempotency_key: str | None = None,
        job_id: str | None = None,
    ) -> tuple[Job, bool]:
        """Queue a job; returns (job, created). A known idempotency key returns its job
        (created False) when the fingerprint matches and raises IdempotencyMismatchError if not."""
        job_id = job_id or new_job_id()
        now = time.time()
        with self._transaction() as db:
            if idempotency_key is not None:
                row = db.execute(
                    "SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,)
                ).fetchone()
                if row is not None:
                    existing = job_from_row(row)
                    if existing.fingerprint != fingerprint:
                        raise IdempotencyMismatchError(existing)
                    return existing, False
            db.execute(
                "INSERT INTO jobs (id, state, spec, idempotency_key, fingerprint, created_at) "
                "VALUES (?, 'queued', ?, ?, ?, ?)",
                (job_id, dump_spec(spec), idempotency_key, fingerprint, now),
            )
            _add_event(db, job_id, "job created", data={"state": "queued"}, at=now)
        job = self.get(job_id)
        assert job is not None  # just inserted
        return job, True

    def get(self, job_id: str) -> Job | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return job_from_row(row) if row is not None else None

    def find_by_key(self, idempotency_key: str) -> Job | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,)
            ).fetchone()
        return job_from_row(row) if row is not None else None

    def page(self, *, limit: int = 20, after: str | None = None) -> tuple[list[Job], bool]:
        """Jobs newest first; `after` is the id of the last job of the previous page.

        Returns (jobs, has_more). An unknown `after` raises KeyError.
        """
        with self._connect() as db:
            if after is None:
                rows = db.execute(
                    "SELECT * FROM jobs ORDER BY seq DESC LIMIT ?", (limit + 1,)
                ).fetchall()
            else:
                cursor = db.execute("SELECT seq FROM jobs WHERE id = ?", (after,)).fetchone()
                if cursor is None:
                    raise KeyError(after)
                rows = db.execute(
                    "SELECT * FROM jobs WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                    (cursor["seq"], limit + 1),
                ).fetchall()
        jobs = [job_from_row(row) for row in rows]
        return jobs[:limit], len(jobs) > limit

    def count(self, state: JobState) -> int:
        with self._connect() as db:
            (n,) = db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (state,)).fetchone()
        return int(n)

    def prune(self, ended_before: float) -> list[str]:
        """Delete the jobs that ended before `ended_before` (a UNIX time), with their events;
        returns their ids."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?",
                (ended_before,),
            ).fetchall()
            ids = [row["id"] for row in rows]
            for job_id in ids:
                db.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
                db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return ids

    def ids(self) -> set[str]:
        with self._connect() as db:
            return {row["id"] for row in db.execute("SELECT id FROM jobs").fetchall()}

    def in_state(self, state: JobState) -> list[Job]:
        """Jobs in `state`, oldest first."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY seq", (state,))
            return [job_from_row(row) for row in rows.fetchall()]

    def events(self, job_id: str, *, after: int = 0, limit: int = 100) -> list[Event]:
        """A job's events in order; `after` is the `seq` of the last event already seen."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (job_id, after, limit),
            ).fetchall()
        return [
            Event(
                seq=row["seq"],
                job_id=row["job_id"],
                at=row["at"],
                level=row["level"],
                message=row["message"],
                data=json.loads(row["data"]) if row["data"] else None,
            )
            for row in rows
        ]

    # --- state changes -------------------------------------------------------------------

    def claim(self, job_id: str) -> bool:
        """queued -> running; False when the job is no longer queued (cancelled meanwhile)."""
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE jobs SET state = 'running', started_at = ? "
                "WHERE id = ? AND state = 'queued'",
                (time.time(), job_id),
            ).rowcount
            if changed:
                _add_event(db, job_id, "job started", data={"state": "running"})
        return bool(changed)

    def set_pid(self, job_id: str, pid: int) -> None:
        with self._connect() as db:
            db.execute("UPDATE jobs SET pid = ? WHERE id = ?", (pid, job_id))

    def set_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        with self._connect() as db:
            db.execute(
                "UPDATE jobs SET progress = ? WHERE id = ? AND state = 'running'",
                (json.dumps(progress), job_id),
            )

    def finish(
        self,
        job_id: str,
        state: JobState,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        message: str | None = None,
        only_from: tuple[JobState, ...] = ("running",),
    ) -> bool:
        """Move a job from one of `only_from` to the terminal `state`; False if it was not there."""
        if state not in TERMINAL:
            raise ValueError(f"{state!r} is not a terminal state")
        marks = ",".join("?" * len(only_from))
        with self._transaction() as db:
            changed = db.execute(
                f"UPDATE jobs SET state = ?, finished_at = ?, result = ?, error = ?, pid = NULL "
                f"WHERE id = ? AND state IN ({marks})",
                (
                    state,
                    time.time(),
                    json.dumps(result) if result is not None else None,
                    json.dumps(error) if error is not None else None,
                    job_id,
                    *only_from,
                ),
            ).rowcount
            if changed:
                level = "error" if state == "failed" else "info"
                data: dict[str, Any] = {"state": state} | ({"error": error} if error else {})
                _add_event(db, job_id, message or f"job {state}", level=level, data=data)
        return bool(changed)

    def request_cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job at once, or flag a running one for its worker to stop.

        Returns the job afterwards (None if unknown); a finished job is returned unchanged.
        """
        with self._transaction() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            if row["state"] == "queued":
                db.execute(
                    "UPDATE jobs SET state = 'cancelled', finished_at = ?, cancel_requested = 1 "
                    "WHERE id = ?",
                    (time.time(), job_id),
                )
                _add_event(
                    db, job_id, "job cancelled before it started", data={"state": "cancelled"}
                )
            elif row["state"] == "running":
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
                _add_event(db, job_id, "cancellation requested")
        return self.get(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        with self._connect() as db:
            row = db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row is not None and row["cancel_requested"])

    def add_event(
        self, job_id: str, message: str, *, level: str = "info", data: dict[str, Any] | None = None
    ) -> None:
        with self._connect() as db:
            _add_event(db, job_id, message, level=level, data=data)


def _add_event(
    db: sqlite3.Connection,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    data: dict[str, Any] | None = None,
    at: float | None = None,
) -> None:
    db.execute(
        "INSERT INTO events (job_id, at, level, message, data) VALUES (?, ?, ?, ?, ?)",
        (
            job_id,
            at if at is not None else time.time(),
            level,
            message,
            json.dumps(data) if data else None,
        ),
    )
