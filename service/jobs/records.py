"""The job store's records: a job and its events as decoded rows, the job states.

A job's `spec` is the typed `JobSpec` (see `service.jobs.spec`). This module imports no torch.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from promptserve.service.jobs.spec import JobSpec, load_spec

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: tuple[JobState, ...] = ("succeeded", "failed", "cancelled")


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
    runner: str | None = None  # the id of the runner holding the lease, while running
    lease_until: float | None = None  # UNIX time the lease runs out unless renewed
    attempts: int = 0  # how many times a runner has claimed the job
    owner: str | None = None  # the name of the API key that started it (None: no keys)

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


def job_from_row(row: Any) -> Job:  # a sqlite3.Row or a psycopg dict row
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
        runner=row["worker"],  # the column predates the name
        lease_until=row["lease_until"],
        attempts=row["attempts"],
        owner=row["owner"],
    )


def add_event_row(
    db: Any,  # a connection of service.jobs.database
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
