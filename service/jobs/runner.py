"""The job runner: claims queued jobs from the job store, runs each in its own job process,
keeps their leases, enforces cancellation, and recovers after a crash.

The same runner is embedded in the process that runs the engine (``promptserve serve``, or the
engine process of ``serve --workers N``; the one-host default) and is the whole of
``promptserve worker`` (a job host). Any number of runners may share one job store: each has its
own runner id (`new_runner_id`), and a job is run by the runner that claimed it. API processes
reach jobs through a `service.jobs.client.JobClient`, never through a runner.

One asyncio task polls the job store (every POLL_S, or at once when woken by a new job or a
cancel request) and, in a thread, does in order:

1. reap: a job process that exited while its job is still ``running`` died without ending
   it (killed, out of memory, a crash in native code, SIGTERM): the job is queued again, or
   ``failed`` (reason ``worker_died``) once tried ``job_max_attempts`` times;
2. heartbeat: renew the leases of this runner's running jobs; a job it no longer holds (its
   lease ran out and another runner took it over) has its process terminated at once, and
   should the job store stay unreachable for half a lease, every job process is stopped, so
   that a job is never run twice at once;
3. expire: any running job whose lease ran out (its runner's host died) is queued again, or
   failed once it was tried ``job_max_attempts`` times;
4. cancel: a running job whose cancel flag has been set for longer than ``cancel_grace_s`` (the
   job process checks the flag between steps, so only one stuck in one long operation gets
   here) is ended ``cancelled`` and its process terminated;
5. start: claim queued jobs, oldest first, while this runner has free slots, each in its own
   job process (`service.jobs.process.run_job`, told what to run by a `JobLaunch`, started as
   `service.jobs.starting.job_context` says);

and, every PRUNE_EVERY_S, forgets ended jobs past their retention (`Housekeeping.prune`).

At start-up, jobs left ``running`` by a runner of this host whose process is gone are queued
again at once (no need to wait for their lease), or failed (``interrupted``) once tried
``job_max_attempts`` times; queued jobs simply run. At a graceful stop (SIGTERM of ``serve`` or
``worker``) the runner hands its running jobs back to the queue, not counting the attempt, for
another runner or the next start; their job processes then get SIGTERM and end writing nothing.
While the job store is unavailable the poll fails, logged by a `FailureLog` (a line when it
starts, one a minute while it lasts, one when it ends), and is tried again every POLL_S; a
start-up whose recovery could not reach the job store recovers at the first poll that can.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from multiprocessing.process import BaseProcess

from promptserve.service.errors import ServiceError
from promptserve.service.job_uploads import UploadStore
from promptserve.service.jobs.failures import FailureLog
from promptserve.service.jobs.housekeeping import Housekeeping, JobFiles, new_runner_id
from promptserve.service.jobs.job_processes import JobProcesses
from promptserve.service.jobs.process import JobLaunch, describe_exit, run_job
from promptserve.service.jobs.starting import job_context, job_server_ready
from promptserve.service.jobs.stopping import stop_all, terminate
from promptserve.service.jobs.store import JobStore
from promptserve.service.settings import Settings, resolve_device

log = logging.getLogger(__name__)

POLL_S = 0.5
# how long terminated job processes get before SIGKILL, all of them together: a stop then ends
# within it whatever the slots (docker-compose*.yml give the container more than this)
STOP_WAIT_S = 10.0


class JobRunner:
    """Runs jobs from `jobs` in up to `slots` job processes (one per entry of `devices`); `id`
    is its runner id, named by every lease it holds and every write that ends one of its jobs."""

    def __init__(
        self,
        jobs: JobStore,
        settings: Settings,
        *,
        slots: int | None = None,
        devices: list[str] | None = None,
    ) -> None:
        self.jobs = jobs
        self.settings = settings
        self.id = new_runner_id()
        self.files = JobFiles(
            settings.job_root, settings.keep_job_uploads, shared=UploadStore.of(settings)
        )
        self.housekeeping = Housekeeping(
            jobs,
            self.files,
            self.id,
            retention_s=settings.job_retention_days * 86_400,
            max_attempts=settings.job_max_attempts,
        )
        self.max_concurrent = settings.max_concurrent_jobs if slots is None else slots
        # one device per slot (one job per GPU); by default every slot uses the job device
        self.devices = devices or [resolve_device(settings.job_device)]
        self.lease_s = settings.job_lease_s
        self.max_attempts = settings.job_max_attempts
        self.cancel_grace_s = settings.cancel_grace_s  # before a cancelled job is killed
        self.failures = FailureLog(log, "job runner poll")
        self._recovered = False  # start-up's recovery ran (it waits for the job store)
        self._last_heartbeat = time.monotonic()  # of the last one the job store answered
        self.processes = JobProcesses(self.devices)
        self.queued = 0  # as of the last poll, for the metrics
        self._lock = threading.Lock()  # one poll at a time; stop() waits for it
        self._stopping = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> int:
        return len(self.processes)

    async def start(self) -> None:
        self._stopping = False
        self._wake = asyncio.Event()  # bound to the running loop
        try:
            await asyncio.to_thread(self._recover)
        except ServiceError as exc:  # the job store is unavailable: the first poll that can
            log.warning("job runner starts without its recovery for now: %s", exc)
        self._task = asyncio.create_task(self._loop(), name="job-runner")

    async def stop(self) -> None:
        self._stopping = True  # also ends the loop should a cancellation be swallowed
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self._stop_processes)

    def wake(self) -> None:
        """Poll now (a job was created or a cancel requested)."""
        self._wake.set()

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await asyncio.to_thread(self.poll)
            except Exception as exc:  # a broken poll must not end the runner: log, try again
                self.failures.failed(exc)
            else:
                self.failures.succeeded()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation
            # that arrives as the event is set, and stop() would wait forever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    await self._wake.wait()

    def poll(self) -> None:
        with self._lock:
            if self._stopping:
                return
            if not self._recovered:
                self._recover()
            self._reap()
            self._heartbeat()
            for job in self.jobs.expire_leases(self.max_attempts):
                log.warning(
                    "job %s: the lease of runner %s ran out",
                    job.id,
                    job.runner,
                    extra={"request_id": job.spec.request_id},
                )
            self._enforce_cancels()
            self._start_queued()
            self.housekeeping.prune_when_due()

    def _recover(self) -> None:
        self.housekeeping.recover()
        self._recovered = True

    # --- the five steps of a poll --------------------------------------------------------

    def _reap(self) -> None:
        for job_id, process in list(self.processes.procs.items()):
            if process.exitcode is None:
                continue
            process.join()
            about = self.processes.about(job_id)
            self.processes.forget(job_id)
            lost = f"the job process ended before the job did ({describe_exit(process.exitcode)})"
            job = self.jobs.retry(job_id, self.id, lost, self.max_attempts, "worker_died")
            if job is None:
                self.files.drop_uploads(job_id)  # it ended the job itself
                continue
            again = job.attempts < self.max_attempts
            outcome = "queued again" if again else "failed"
            log.error("job %s: %s; %s", job_id, lost, outcome, extra=about)
            if not again:
                self.files.drop_uploads(job_id)

    def _heartbeat(self) -> None:
        if not self.processes:
            self._last_heartbeat = time.monotonic()
            return
        try:
            held = self.jobs.heartbeat(self.id, list(self.processes), self.lease_s)
        except Exception:
            if time.monotonic() - self._last_heartbeat > self.lease_s / 2:
                # another runner may take these jobs over once their leases run out: stop first
                log.error("job store unreachable for half a lease: stopping every job")
                for job_id in list(self.processes):
                    self._terminate(self.processes[job_id])
                    self.processes.forget(job_id)
            raise
        self._last_heartbeat = time.monotonic()
        for job_id in set(self.processes) - held:
            job = self.jobs.get(job_id)
            if job is not None and job.finished:
                continue  # ended by its job process: reaped once that exits
            log.warning(
                "job %s is no longer held by this runner: stopping its process",
                job_id,
                extra=self.processes.about(job_id),
            )
            self._terminate(self.processes[job_id])
            self.processes.forget(job_id)

    def _enforce_cancels(self) -> None:
        if not self.processes:
            return
        now = time.monotonic()
        for job in self.jobs.in_state("running"):
            if not job.cancel_requested or job.id not in self.processes:
                continue
            first = self.processes.cancel_seen.setdefault(job.id, now)
            if now - first < self.cancel_grace_s:
                continue
            message = "job cancelled: its process did not stop in time and was terminated"
            if self.jobs.finish(job.id, "cancelled", message=message, runner=self.id):
                log.warning("job %s: %s", job.id, message, extra=self.processes.about(job.id))
            self._terminate(self.processes[job.id])

    def _start_queued(self) -> None:
        self.queued = self.jobs.count("queued")
        while len(self.processes) < self.max_concurrent and not self._stopping:
            if self.queued == 0 or not job_server_ready(self.processes.free_device()):
                return  # a job claimed before the server is ready would wait on its imports
            job = self.jobs.claim_next(self.id, self.lease_s)
            if job is None:
                return
            self.queued = max(0, self.queued - 1)
            if job.id in self.processes:  # queued again while this poll was slow, and taken back
                log.warning("job %s: queued again while its process here goes on", job.id)
                continue
            device = self.processes.free_device()
            about = {"request_id": job.spec.request_id}
            try:
                launch = JobLaunch.of(self.settings, self.jobs.locator, job.id, device, self.id)
                process = job_context(device).Process(
                    target=run_job, args=(launch,), name=f"promptserve-{job.id}"
                )
                process.start()
            except Exception as exc:
                log.exception("could not start a process for job %s", job.id, extra=about)
                error = {"reason": "error", "message": f"could not start the job process: {exc}"}
                self.jobs.finish(job.id, "failed", error=error, runner=self.id)
                continue
            assert process.pid is not None  # started
            self.jobs.set_pid(job.id, process.pid)
            self.processes.add(job.id, process, device, job.spec.request_id)
            log.info("job %s started in process %d on %s", job.id, process.pid, device, extra=about)

    # --- stopping ------------------------------------------------------------------------

    def _stop_processes(self) -> None:
        with self._lock:
            self._stopping = True
            try:  # before the signal: the job's writes then name a lost runner
                for job in self.jobs.hand_back(self.id, list(self.processes)):
                    log.warning(
                        "job %s handed back to the queue: this runner stops",
                        job.id,
                        extra=self.processes.about(job.id),
                    )
            except ServiceError as exc:  # left running: requeued by its lease or next start
                log.error("could not hand the running jobs back: %s", exc)
            stop_all(self.processes.procs, STOP_WAIT_S, self.processes.about)
            self.processes.procs.clear()
            self.processes.device_of.clear()

    def _terminate(self, process: BaseProcess) -> None:
        terminate(process, STOP_WAIT_S)
