"""The job runner: the service's side of tuning jobs. It starts worker processes, watches them,
enforces cancellation, and recovers after a restart.

One asyncio task polls the job store (every POLL_S, or at once when woken by a new job or a
cancel request) and, in a thread, does three things in order:

1. reap: a worker process that exited while its job is still ``running`` died without ending
   it (killed, out of memory, a crash in native code): the job becomes ``failed``
   (reason ``worker_died``);
2. cancel: a running job whose cancel flag has been set for longer than ``cancel_grace_s`` (the
   worker checks the flag between steps, so only a worker stuck in one long operation gets
   here) is ended ``cancelled`` and its process terminated;
3. start: queued jobs, oldest first, while fewer than ``max_concurrent_jobs`` run, each in its
   own ``spawn``-ed process (`service.jobs.worker.run_job`).

At start-up, jobs left ``running`` by a previous service process are marked ``failed`` with
reason ``interrupted``; queued jobs simply run. At shutdown, running workers get SIGTERM and end
their jobs as interrupted. One service process per store: two services sharing a store would
each take the other's running jobs for leftovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import threading
import time
from multiprocessing.process import BaseProcess

from service.errors import JobFinishedError, UnknownJobError
from service.jobs.store import Job, JobStore
from service.jobs.worker import run_job
from service.settings import Settings, resolve_device

log = logging.getLogger(__name__)

POLL_S = 0.5
STOP_WAIT_S = 10.0  # how long a terminated worker gets before SIGKILL
UPLOADS_DIR = "images"
PRUNE_EVERY_S = 600.0  # ended jobs past their retention are looked for this often


class JobRunner:
    def __init__(self, jobs: JobStore, settings: Settings) -> None:
        self.jobs = jobs
        self.jobs_dir = settings.job_root
        self.store_root = settings.store
        self.device = resolve_device(settings.job_device)
        self.max_concurrent = settings.max_concurrent_jobs
        self.threads = settings.job_threads  # torch threads in a worker
        self.niceness = settings.job_niceness  # added to a worker's niceness
        self.cancel_grace_s = settings.cancel_grace_s  # before a cancelled worker is killed
        self.keep_uploads = settings.keep_job_uploads
        self.log_level = settings.log_level
        self.retention_s = settings.job_retention_days * 86_400
        self._next_prune = 0.0  # monotonic time of the next prune
        self.queued = 0  # as of the last poll, for the metrics
        self._procs: dict[str, BaseProcess] = {}
        self._cancel_seen: dict[str, float] = {}  # job id -> when its cancel flag was first seen
        self._lock = threading.Lock()  # one poll at a time; stop() waits for it
        self._stopping = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._context = multiprocessing.get_context("spawn")

    @property
    def running(self) -> int:
        return len(self._procs)

    async def start(self) -> None:
        self._stopping = False
        self._wake = asyncio.Event()  # bound to the running loop
        await asyncio.to_thread(self.recover)
        self._task = asyncio.create_task(self._loop(), name="job-runner")

    async def stop(self) -> None:
        self._stopping = True  # also ends the loop should a cancellation be swallowed
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self._stop_workers)

    def wake(self) -> None:
        """Poll now (a job was created or a cancel requested)."""
        self._wake.set()

    def recover(self) -> list[str]:
        """Mark jobs a previous service process left running as failed (interrupted), and
        remove what earlier processes left behind: files of jobs that have ended or are
        unknown, and ended jobs past their retention."""
        interrupted = []
        for job in self.jobs.in_state("running"):
            error = {
                "reason": "interrupted",
                "message": "the service stopped while the job was running",
            }
            if self.jobs.finish(job.id, "failed", error=error, message="job interrupted"):
                interrupted.append(job.id)
                self.drop_uploads(job.id)
        if interrupted:
            log.warning(
                "marked %d job(s) left running as interrupted: %s",
                len(interrupted),
                ", ".join(interrupted),
            )
        self.prune()
        self._remove_orphans()
        return interrupted

    def prune(self) -> None:
        """Forget ended jobs older than the retention, with their events and files."""
        self._next_prune = time.monotonic() + PRUNE_EVERY_S
        for job_id in self.jobs.prune(time.time() - self.retention_s):
            shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)

    def _remove_orphans(self) -> None:
        """Job folders whose job has ended (or is gone) lose their uploads; empty ones go."""
        if not self.jobs_dir.is_dir():
            return
        live = {job.id for state in ("queued", "running") for job in self.jobs.in_state(state)}
        known = self.jobs.ids()
        for folder in self.jobs_dir.iterdir():
            if not folder.is_dir() or folder.name in live:
                continue
            if folder.name not in known:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                self.drop_uploads(folder.name)

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await asyncio.to_thread(self.poll)
            except Exception:  # a broken poll must not end the runner: log, try again
                log.exception("job runner poll failed")
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation
            # that arrives as the event is set, and stop() would wait forever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    await self._wake.wait()

    def poll(self) -> None:
        with self._lock:
            if self._stopping:
                return
            self._reap()
            self._enforce_cancels()
            self._start_queued()
            if time.monotonic() >= self._next_prune:
                self.prune()

    # --- the three steps of a poll -------------------------------------------------------

    def _reap(self) -> None:
        for job_id, process in list(self._procs.items()):
            if process.exitcode is None:
                continue
            process.join()
            del self._procs[job_id]
            self._cancel_seen.pop(job_id, None)
            error = {
                "reason": "worker_died",
                "message": f"the worker process ended without finishing the job "
                f"({_describe_exit(process.exitcode)})",
            }
            if self.jobs.finish(job_id, "failed", error=error, message="worker process died"):
                log.error("job %s: %s", job_id, error["message"])
            self.drop_uploads(job_id)

    def _enforce_cancels(self) -> None:
        if not self._procs:
            return
        now = time.monotonic()
        for job in self.jobs.in_state("running"):
            if not job.cancel_requested or job.id not in self._procs:
                continue
            first = self._cancel_seen.setdefault(job.id, now)
            if now - first < self.cancel_grace_s:
                continue
            message = "job cancelled: the worker did not stop in time and was terminated"
            if self.jobs.finish(job.id, "cancelled", message=message):
                log.warning("job %s: %s", job.id, message)
            self._terminate(self._procs[job.id])

    def _start_queued(self) -> None:
        queued = self.jobs.in_state("queued")
        self.queued = len(queued)
        for job in queued:
            if len(self._procs) >= self.max_concurrent:
                return
            if not self.jobs.claim(job.id):
                continue  # cancelled meanwhile
            self.queued -= 1
            try:
                process = self._context.Process(
                    target=run_job,
                    args=(
                        str(self.jobs.path),
                        job.id,
                        str(self.store_root),
                        self.device,
                        self.threads,
                        self.niceness,
                        os.getpid(),
                        self.log_level,
                    ),
                    name=f"promptserve-{job.id}",
                )
                process.start()
            except Exception as exc:
                log.exception("could not start a worker for job %s", job.id)
                error = {"reason": "error", "message": f"could not start the worker: {exc}"}
                self.jobs.finish(job.id, "failed", error=error)
                continue
            assert process.pid is not None  # started
            self.jobs.set_pid(job.id, process.pid)
            self._procs[job.id] = process
            log.info("job %s started in process %d", job.id, process.pid)

    # --- stopping ------------------------------------------------------------------------

    def _stop_workers(self) -> None:
        with self._lock:
            self._stopping = True
            for process in self._procs.values():
                if process.is_alive() and process.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGTERM)
            for job_id, process in self._procs.items():
                process.join(STOP_WAIT_S)
                if process.is_alive():
                    process.kill()
                    process.join()
                # the worker records this itself on SIGTERM; this covers a worker that could not
                error = {"reason": "interrupted", "message": "the service stopped"}
                self.jobs.finish(job_id, "failed", error=error, message="job interrupted")
            self._procs.clear()

    def _terminate(self, process: BaseProcess) -> None:
        process.terminate()
        process.join(STOP_WAIT_S)
        if process.is_alive():
            process.kill()
            process.join()

    async def cancel(self, job_id: str, *, wait_s: float) -> Job:
        """Cancel a queued job at once, or flag a running one and wait up to `wait_s` for its
        worker to stop; returns the job as it then is.

        Raises UnknownJobError, or JobFinishedError when the job had already ended (or
        published before the flag reached its worker).
        """
        job = await self.get(job_id)
        if job.finished:
            raise JobFinishedError(f"job {job_id} has already ended ({job.state})")
        flagged = await asyncio.to_thread(self.jobs.request_cancel, job_id)
        job = flagged if flagged is not None else job
        if job.state == "cancelled":  # cancelled while queued: no worker will clean up after it
            await asyncio.to_thread(self.drop_uploads, job_id)
        self.wake()
        deadline = time.monotonic() + wait_s
        while not job.finished and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            job = await self.get(job_id)
        if job.state == "succeeded":
            raise JobFinishedError(
                f"job {job_id} finished and published before it could be cancelled"
            )
        return job

    async def get(self, job_id: str) -> Job:
        """Job `job_id`; UnknownJobError when there is none."""
        job = await asyncio.to_thread(self.jobs.get, job_id)
        if job is None:
            raise UnknownJobError(f"no job {job_id!r}")
        return job

    def drop_uploads(self, job_id: str) -> None:
        """Remove an ended job's uploaded images (unless they are to be kept), and its folder
        once that is empty."""
        if self.keep_uploads:
            return
        folder = self.jobs_dir / job_id
        shutil.rmtree(folder / UPLOADS_DIR, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.rmdir()


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
