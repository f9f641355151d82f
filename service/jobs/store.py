"""The job store: few-shot tuning jobs and their events, shared by every process that serves or
runs them.

SQLite (WAL) in the store directory on one host; Postgres when ``PROMPTSERVE_DATABASE_URL``
names one, for API replicas and job hosts on several machines (see `service.jobs.database`).
Every state change is one conditional ``UPDATE`` (``... WHERE state = 'running'``), so two
processes can never both move a job: a job cancelled while queued is never started, and a job
process cannot mark a job that was already given up on.

Runners take queued jobs with `claim_next`, which holds a lease (the runner id, ``lease_until``)
that the runner renews while the job runs (`heartbeat`). A job whose lease ran out (its runner's
host died, or lost the database) is requeued or failed by whichever runner notices first
(`expire_leases`); its old runner finds the job no longer held and stops it, and every write of
a job's runner or job process names the runner (`finish(..., runner=...)`), so a late writer
changes nothing.

Each call opens its own short-lived connection (a connection must not cross threads or
processes), so a `JobStore` can be used from any thread and rebuilt in a job process from
`locator`. This module imports no torch and no web framework.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

from promptserve.service.errors import ServiceError
from promptserve.service.jobs.database import BUSY_TIMEOUT_S
from promptserve.service.jobs.leases import JobLeases, QueueFullError
from promptserve.service.jobs.opening import JobDatabase
from promptserve.service.jobs.records import (
    TERMINAL,
    Event,
    IdempotencyMismatchError,
    Job,
    JobState,
    add_event_row,
    job_from_row,
    new_job_id,
)
from promptserve.service.jobs.spec import JobSpec, dump_spec

__all__ = [
    "Event",
    "IdempotencyMismatchError",
    "Job",
    "JobState",
    "JobStore",
    "QueueFullError",
    "new_job_id",
]


class JobStore(JobLeases):
    """Jobs in the database at `locator`: a SQLite file path, or a ``postgresql://`` URL
    (created with its schema when missing). While the database cannot be used, every call
    raises `JobsUnavailableError` or another storage fault's error (`service.jobs.opening`);
    each call waits at most `timeout_s` for a lock."""

    db: JobDatabase

    def __init__(self, locator: Path | str, *, timeout_s: float = BUSY_TIMEOUT_S) -> None:
        super().__init__(JobDatabase(locator, timeout_s=timeout_s))
        self.locator = self.db.locator  # what a job process reopens the store from

    @property
    def path(self) -> Path:
        """The SQLite file (a Postgres-backed store has none)."""
        if self.db.path is None:
            raise AttributeError("a Postgres job store has no file path")
        return self.db.path

    def probe(self) -> str | None:
        """Why jobs cannot be served now (None while they can); while they cannot, each probe
        tries the database again (as often as `service.jobs.opening` allows)."""
        if self.db.unavailable is not None:
            with contextlib.suppress(ServiceError):
                self.count("queued")
        return self.db.unavailable

    def created_at(self) -> float:
        """When this database was made (its first migration): job folders older than it belong
        to an earlier one."""
        with self._connect() as db:
            row = db.execute("SELECT MIN(applied_at) AS at FROM schema_migrations").fetchone()
        return float(row["at"]) if row["at"] is not None else 0.0

    def _connect(self) -> Any:
        return self.db.connect()

    def _transaction(self) -> Any:
        return self.db.transaction()

    # --- creating and reading ------------------------------------------------------------

    def create(
        self,
        spec: JobSpec,
        *,
        fingerprint: str,
        idempotency_key: str | None = None,
        job_id: str | None = None,
        owner: str | None = None,
        max_queued: int | None = None,
    ) -> tuple[Job, bool]:
        """Queue a job; returns (job, created). A known idempotency key returns its job
        (created False) when the fingerprint matches and raises IdempotencyMismatchError if not.
        `owner` is the name of the API key that asked for it. With `max_queued` jobs queued
        already it raises QueueFullError (`JobLeases._admit`).

        This is the one place the key is checked: the insert yields to the key's job, whether
        that was created long ago or by another process a moment ago."""
        job_id = job_id or new_job_id()
        now = time.time()
        with self._transaction() as db:
            self._admit(db, max_queued, idempotency_key)
            inserted = db.execute(
                "INSERT INTO jobs (id, state, spec, idempotency_key, fingerprint, created_at, "
                "owner) VALUES (?, 'queued', ?, ?, ?, ?, ?) "
                "ON CONFLICT (idempotency_key) DO NOTHING",
                (job_id, dump_spec(spec), idempotency_key, fingerprint, now, owner),
            ).rowcount
            if not inserted:
                assert idempotency_key is not None  # NULL keys never conflict
                row = db.execute(
                    "SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,)
                ).fetchone()
                existing = job_from_row(row)
                if existing.fingerprint != fingerprint:
                    raise IdempotencyMismatchError(existing)
                return existing, False
            created = {"state": "queued", "request_id": spec.request_id}
            add_event_row(db, job_id, "job created", data=created, at=now)
        job = self.get(job_id)
        assert job is not None  # just inserted
        return job, True

    def get(self, job_id: str) -> Job | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return job_from_row(row) if row is not None else None

    def page(
        self, *, limit: int = 20, after: str | None = None, owner: str | None = None
    ) -> tuple[list[Job], bool]:
        """Jobs newest first (with `owner`, only those it started); `after` is the id of the
        last job of the previous page.

        Returns (jobs, has_more). An unknown `after` raises KeyError.
        """
        where, params = ("owner = ?", [owner]) if owner is not None else ("1 = 1", [])
        with self._connect() as db:
            if after is not None:
                cursor = db.execute("SELECT seq FROM jobs WHERE id = ?", (after,)).fetchone()
                if cursor is None:
                    raise KeyError(after)
                where, params = f"{where} AND seq < ?", [*params, cursor["seq"]]
            rows = db.execute(
                f"SELECT * FROM jobs WHERE {where} ORDER BY seq DESC LIMIT ?", (*params, limit + 1)
            ).fetchall()
        jobs = [job_from_row(row) for row in rows]
        return jobs[:limit], len(jobs) > limit

    def count(self, state: JobState) -> int:
        with self._connect() as db:
            row = db.execute("SELECT COUNT(*) AS n FROM jobs WHERE state = ?", (state,)).fetchone()
        return int(row["n"])

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

    def claim(self, job_id: str, *, runner: str | None = None, lease_s: float = 0.0) -> bool:
        """queued -> running; False when the job is no longer queued (cancelled meanwhile)."""
        with self._transaction() as db:
            return self._claim(db, job_id, runner, lease_s)

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
        runner: str | None = None,
    ) -> bool:
        """Move a job from one of `only_from` to the terminal `state`; False if it was not there
        (or, with `runner`, when that runner no longer holds it)."""
        if state not in TERMINAL:
            raise ValueError(f"{state!r} is not a terminal state")
        marks = ",".join("?" * len(only_from))
        fence = " AND worker = ?" if runner is not None else ""  # the runner id's column
        with self._transaction() as db:
            changed = db.execute(
                f"UPDATE jobs SET state = ?, finished_at = ?, result = ?, error = ?, pid = NULL, "
                f"lease_until = NULL WHERE id = ? AND state IN ({marks}){fence}",
                (
                    state,
                    time.time(),
                    json.dumps(result) if result is not None else None,
                    json.dumps(error) if error is not None else None,
                    job_id,
                    *only_from,
                    *((runner,) if runner is not None else ()),
                ),
            ).rowcount
            if changed:
                level = "error" if state == "failed" else "info"
                data: dict[str, Any] = {"state": state} | ({"error": error} if error else {})
                add_event_row(db, job_id, message or f"job {state}", level=level, data=data)
        return bool(changed)

    def request_cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job at once, or flag a running one for its job process to stop.

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
                add_event_row(
                    db, job_id, "job cancelled before it started", data={"state": "cancelled"}
                )
            elif row["state"] == "running":
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
                add_event_row(db, job_id, "cancellation requested")
        return self.get(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        with self._connect() as db:
            row = db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row is not None and row["cancel_requested"])

    def add_event(
        self, job_id: str, message: str, *, level: str = "info", data: dict[str, Any] | None = None
    ) -> None:
        with self._connect() as db:
            add_event_row(db, job_id, message, level=level, data=data)
