"""The job store's leases: how runners claim queued jobs, keep them, and take over the jobs of
runners that stopped renewing theirs (see `service.jobs.store` for the whole picture).

`JobLeases` owns the database and the queue operations of several runners; `JobStore` extends it
with the state machine and its reads, so each stays one short module. A runner is named by its
runner id (``host:pid:nonce``, `service.jobs.housekeeping.new_runner_id`), kept in the jobs
table's ``worker`` column. Imports no torch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from promptserve.service.jobs.records import Job, add_event_row, job_from_row

if TYPE_CHECKING:
    from promptserve.service.jobs.opening import JobDatabase

PG_QUEUE_LOCK = 0x71756575  # advisory lock id: one new job is counted against the limit at once


class QueueFullError(Exception):
    """As many jobs are queued as the limit allows; carries how many."""

    def __init__(self, queued: int) -> None:
        super().__init__(f"{queued} jobs are queued")
        self.queued = queued


class JobLeases:
    def __init__(self, db: JobDatabase) -> None:
        self.db = db

    def claim_next(self, runner: str, lease_s: float) -> Job | None:
        """Take the oldest queued job for runner id `runner`, with a lease of `lease_s`
        seconds; None when nothing is queued. Two runners asking at once never get the same
        job."""
        with self.db.transaction() as db:
            row = db.execute(self.db.next_queued).fetchone()
            if row is None or not self._claim(db, row["id"], runner, lease_s):
                return None
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()
        return job_from_row(row)

    def _claim(self, db: Any, job_id: str, runner: str | None, lease_s: float) -> bool:
        now = time.time()
        changed = db.execute(
            "UPDATE jobs SET state = 'running', started_at = ?, worker = ?, lease_until = ?, "
            "attempts = attempts + 1 WHERE id = ? AND state = 'queued'",
            (now, runner, now + lease_s if runner else None, job_id),
        ).rowcount
        if changed:  # the event's key is public (GET /jobs/{id}/events): it stays "worker"
            data: dict[str, Any] = {"state": "running"} | ({"worker": runner} if runner else {})
            add_event_row(db, job_id, "job started", data=data)
        return bool(changed)

    def _admit(self, db: Any, max_queued: int | None, idempotency_key: str | None) -> None:
        """Inside a new job's transaction: refuse it (QueueFullError) when `max_queued` jobs
        are queued already, unless its idempotency key names a job (that one is answered).
        SQLite's BEGIN IMMEDIATE and, on Postgres, a transaction lock make the count and the
        insert after it one step, so concurrent submissions never overshoot the limit."""
        if max_queued is None:
            return
        if self.db.dialect == "postgres":
            db.execute("SELECT pg_advisory_xact_lock(?)", (PG_QUEUE_LOCK,))
        row = db.execute("SELECT COUNT(*) AS n FROM jobs WHERE state = 'queued'").fetchone()
        if int(row["n"]) < max_queued:
            return
        if (
            idempotency_key is not None
            and db.execute(
                "SELECT 1 FROM jobs WHERE idempotency_key = ?", (idempotency_key,)
            ).fetchone()
        ):
            return
        raise QueueFullError(int(row["n"]))

    def heartbeat(self, runner: str, job_ids: list[str], lease_s: float) -> set[str]:
        """Renew runner `runner`'s leases on `job_ids`; returns the ids it still holds (a job
        missing from the answer was taken from it, or has ended)."""
        if not job_ids:
            return set()
        marks = ",".join("?" * len(job_ids))
        with self.db.connect() as db:
            db.execute(
                f"UPDATE jobs SET lease_until = ? WHERE worker = ? AND state = 'running' "
                f"AND id IN ({marks})",
                (time.time() + lease_s, runner, *job_ids),
            )
            rows = db.execute(
                f"SELECT id FROM jobs WHERE worker = ? AND state = 'running' AND id IN ({marks})",
                (runner, *job_ids),
            ).fetchall()
        return {row["id"] for row in rows}

    def expire_leases(self, max_attempts: int) -> list[Job]:
        """Requeue the running jobs whose lease ran out (their runner stopped renewing it), or
        fail them (reason ``worker_died``) once they have been tried `max_attempts` times.
        Returns the jobs as they were."""
        now = time.time()
        with self.db.transaction() as db:
            rows = db.execute(self.db.expired_leases, (now,)).fetchall()
            expired = [job_from_row(row) for row in rows]
            for job in expired:
                _requeue(db, job, f"runner {job.runner} stopped renewing its lease", max_attempts)
        return expired

    def hand_back(self, runner: str, job_ids: list[str]) -> list[Job]:
        """Give up runner `runner`'s running `job_ids` before it stops gracefully (SIGTERM):
        each is queued again at once, for another runner or the next start, and the run it
        gave up is not counted as an attempt (a stop is no failure of the job). Returns the
        jobs as they were."""
        if not job_ids:
            return []
        marks = ",".join("?" * len(job_ids))
        with self.db.transaction() as db:
            rows = db.execute(
                f"SELECT * FROM jobs WHERE worker = ? AND state = 'running' AND id IN ({marks})",
                (runner, *job_ids),
            ).fetchall()
            given = [job_from_row(row) for row in rows]
            for job in given:
                lost = f"runner {runner} stopped and handed the job back"
                _requeue(db, job, lost, max_attempts=0, counted=False)
        return given

    def retry(
        self, job_id: str, runner: str | None, lost: str, max_attempts: int, reason: str
    ) -> Job | None:
        """Queue runner `runner`'s running job again after its run failed for a reason that
        is not the job's (`lost` says how: its process died, the service stopped), or fail it
        with `reason` once tried `max_attempts` times. Returns the job as it was; None when
        that runner did not hold it (nothing changed)."""
        fence = "worker = ?" if runner is not None else "worker IS NULL"
        with self.db.transaction() as db:
            row = db.execute(
                f"SELECT * FROM jobs WHERE id = ? AND state = 'running' AND {fence}",
                (job_id, *((runner,) if runner is not None else ())),
            ).fetchone()
            if row is None:
                return None
            job = job_from_row(row)
            _requeue(db, job, lost, max_attempts, reason=reason)
        return job

    def running_on(self, host: str) -> list[Job]:
        """Running jobs whose runner id names `host` (see `new_runner_id`)."""
        with self.db.connect() as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE state = 'running' AND worker LIKE ? ORDER BY seq",
                (f"{host}:%",),
            ).fetchall()
        return [job_from_row(row) for row in rows]

    def holds(self, job_id: str, runner: str) -> bool:
        """Whether runner `runner` still runs `job_id` (its lease was not taken over, the job not
        ended by someone else)."""
        with self.db.connect() as db:
            row = db.execute(
                "SELECT 1 FROM jobs WHERE id = ? AND state = 'running' AND worker = ?",
                (job_id, runner),
            ).fetchone()
        return row is not None

    @contextmanager
    def publish_lock(self, name: str) -> Iterator[None]:
        """Held while a job process uploads a version of classifier `name` to an object store, so
        two hosts never take one version number (Postgres: an advisory lock; SQLite serves one
        host, whose exporters already take numbers by an atomic rename)."""
        if self.db.path is not None:
            yield
            return
        with self.db.transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (f"publish:{name}",))
            yield


def _requeue(
    db: Any,
    job: Job,
    lost: str,
    max_attempts: int,
    *,
    reason: str = "worker_died",
    counted: bool = True,
) -> None:
    """Queue a running job again after its run was lost (`lost` says how), or fail it with
    `reason` once it has been tried `max_attempts` times. A run not `counted` (a graceful
    stop) is always queued again and gives its attempt back."""
    if not counted or job.attempts < max_attempts:
        uncount = "" if counted else ", attempts = attempts - 1"  # a claim counted it: >= 1
        db.execute(
            "UPDATE jobs SET state = 'queued', worker = NULL, lease_until = NULL, "
            f"pid = NULL, progress = NULL{uncount} WHERE id = ? AND state = 'running'",
            (job.id,),
        )
        which = f"attempt {job.attempts + 1} of {max_attempts}" if counted else "not counted"
        add_event_row(
            db,
            job.id,
            f"{lost}; job queued again ({which})",
            level="warning",
            data={"state": "queued"},
        )
        return
    error = {"reason": reason, "message": f"{lost} (attempt {job.attempts})"}
    db.execute(
        "UPDATE jobs SET state = 'failed', finished_at = ?, error = ?, pid = NULL, "
        "lease_until = NULL WHERE id = ? AND state = 'running'",
        (time.time(), json.dumps(error), job.id),
    )
    data = {"state": "failed", "error": error}
    add_event_row(db, job.id, "worker lost", level="error", data=data)
