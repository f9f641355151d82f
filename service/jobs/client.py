"""The job client: what an API process does with jobs, whichever process runs them.

Every API process holds one: reading a job, cancelling one, and waking the runner that runs
them (after a job was queued or a cancel requested). In ``promptserve serve`` the runner lives
in the same process and `wake` pokes it; an API worker of ``serve --workers N`` wakes the engine
process's runner over its socket; a runner elsewhere (``promptserve worker``) finds the job at
its next poll either way. The job store is the only state the client and the runners share.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from promptserve.service.errors import JobFinishedError, UnknownJobError
from promptserve.service.jobs.housekeeping import JobFiles
from promptserve.service.jobs.store import Job, JobStore

CANCEL_POLL_S = 0.1  # how often `cancel` looks whether a flagged job has stopped


class JobClient:
    def __init__(self, jobs: JobStore, files: JobFiles, wake: Callable[[], None]) -> None:
        self.jobs = jobs
        self.files = files
        self._wake = wake

    def wake(self) -> None:
        """Have the runner poll now (a job was queued or a cancel requested)."""
        self._wake()

    async def get(self, job_id: str) -> Job:
        """Job `job_id`; UnknownJobError when there is none."""
        job = await asyncio.to_thread(self.jobs.get, job_id)
        if job is None:
            raise UnknownJobError(f"no job {job_id!r}")
        return job

    async def cancel(self, job_id: str, *, wait_s: float) -> Job:
        """Cancel a queued job at once, or flag a running one and wait up to `wait_s` for its
        job process to stop; returns the job as it then is.

        Raises UnknownJobError, or JobFinishedError when the job had already ended (or
        published before the flag reached its job process).
        """
        job = await self.get(job_id)
        if job.finished:
            raise JobFinishedError(f"job {job_id} has already ended ({job.state})")
        flagged = await asyncio.to_thread(self.jobs.request_cancel, job_id)
        job = flagged if flagged is not None else job
        if job.state == "cancelled":  # cancelled while queued: no runner will clean up after it
            await asyncio.to_thread(self.files.drop_uploads, job_id)
        self.wake()
        deadline = time.monotonic() + wait_s
        while not job.finished and time.monotonic() < deadline:
            await asyncio.sleep(CANCEL_POLL_S)
            job = await self.get(job_id)
        if job.state == "succeeded":
            raise JobFinishedError(
                f"job {job_id} finished and published before it could be cancelled"
            )
        return job
