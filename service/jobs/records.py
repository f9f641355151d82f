"""The job store's records: the tables, a job and its events as decoded rows, the job states.

A job's `spec` is the typed `JobSpec` (see `service.jobs.spec`). This module imports no torch.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from service.jobs.spec import JobSpec, load_spec

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: tuple[JobState, ...] = ("succeeded", "failed", "cancelled")


SCHEMA = """
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


@dataclass(frozen=True)
class Job:
    """One row of the jobs table, decoded."""

    id: str
    seq: int
    state: JobState
    spec: JobSpec
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    progress: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    cancel_requested: bool = False
    pid: int | None = None
    idempotency_key: str | None = None
    fingerprint: str = ""

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL


@dataclass(frozen=True)
class Event:
    seq: int
    job_id: str
    at: float
    level: str
    message: str
    data: dict[str, Any] | None = field(default=None)


class IdempotencyMismatchError(Exception):
    """An Idempotency-Key reused for a different request; carries the existing job."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"idempotency key already used by job {job.id} for another request")
        self.job = job


def new_job_id() -> str:
    return f"job-{uuid.uuid4().hex[:20]}"


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


def job_from_row(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        seq=row["seq"],
        state=cast(JobState, row["state"]),
        spec=load_spec(row["spec"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        progress=_loads(row["progress"]),
        result=_loads(row["result"]),
        error=_loads(row["error"]),
        cancel_requested=bool(row["cancel_requested"]),
        pid=row["pid"],
        idempotency_key=row["idempotency_key"],
        fingerprint=row["fingerprint"],
    )
