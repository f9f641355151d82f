"""The job process: what runs inside the separate process of one tuning job.

`run_job` is the process's target (started as `service.jobs.starting` says: on the CPU forked
from a server that imported torch and open_clip once, on CUDA spawned; neither holds any of the
service's threads or sockets), given one `JobLaunch`. It
lowers its own priority and bounds its threads first, so classification in the service stays
responsive, then runs the same entry point as ``promptserve train``
(`training.api.train_classifier`) and ends the job in the job store itself: ``succeeded`` with
the published version and its accuracies, ``failed`` with the error, or ``cancelled``.

It stops (between two training steps, or before export) when the job's cancel flag is set, when
its runner no longer holds the job (the lease ran out and another runner took it over: it then
writes nothing), or when the runner's process is gone (its parent process changed, or the
runner's pid is no longer alive: a crashed service must not leave a job process publishing
behind the back of its successor). Every write
that ends the job names the runner's id, so a late one changes nothing. SIGTERM raises
SystemExit, so an export in progress removes its staging directory on the way out; a job
stopped that way, or orphaned, is not ended here: its runner (or the next one) queues it again.
Every line the process logs names the request id of the ``POST /adapt`` that made the job (kept
in its spec).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Self

from promptserve.models.devices import pin_gpu  # torch-free
from promptserve.service import tracing
from promptserve.service.jobs.object_store import mirror_of, pull_uploads, upload_version
from promptserve.service.jobs.spec import UPLOAD, JobSpec
from promptserve.service.jobs.starting import runner_alive
from promptserve.service.jobs.store import Job, JobStore
from promptserve.service.logs import LOG_CONTEXT, LogContext, LogFormat, configure_logging
from promptserve.service.object_calls import CallLimits
from promptserve.service.publishing import job_publishing
from promptserve.training.errors import TrainingCancelled, without_paths  # torch-free

if TYPE_CHECKING:  # settings load torch; a job process imports it only after its niceness
    from promptserve.service.settings import Settings

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5  # progress writes and cancel checks, at most this often


@dataclass(frozen=True, kw_only=True)
class JobLaunch:
    """What a runner tells the job process it starts (picklable: it crosses to the process)."""

    database: str  # the job store's locator (`JobStore.locator`)
    job_id: str
    store: Path  # the classifier store the version is published into
    device: str  # the torch device the job trains on
    threads: int  # torch threads
    niceness: int  # added to the process's niceness
    runner_id: str  # the runner holding the job's lease; every write that ends the job names it
    runner_pid: int  # the runner's process: the job stops when it is gone
    log_level: str = "info"
    log_format: LogFormat = "text"
    store_url: str | None = None  # an object store the published version is uploaded to
    s3_endpoint_url: str | None = None
    s3_limits: CallLimits = CallLimits()  # timeouts and attempts of each object-store call
    environ: dict[str, str] | None = None  # the runner's, taken first (`service.jobs.starting`)

    @classmethod
    def of(cls, settings: Settings, database: str, job_id: str, device: str, runner: str) -> Self:
        """The launch of job `job_id` on `device` by runner `runner` of this process."""
        return cls(
            database=database,
            job_id=job_id,
            store=settings.store,
            device=device,
            threads=settings.job_threads,
            niceness=settings.job_niceness,
            runner_id=runner,
            runner_pid=os.getpid(),
            log_level=settings.log_level,
            log_format=settings.log_format,
            store_url=settings.store_url,
            s3_endpoint_url=settings.s3_endpoint_url,
            s3_limits=CallLimits.of(settings),
            environ=dict(os.environ),
        )


def run_job(launch: JobLaunch) -> None:
    """Run the launched job to the end; every outcome is written to the job store."""
    if launch.environ is not None:  # a forked process has its server's, not its runner's
        os.environ.clear()
        os.environ.update(launch.environ)
    configure_logging(launch.log_level, launch.log_format)
    try:
        tracing.configure("job")
    except tracing.TracingUnavailableError as exc:  # the service reported it at start-up
        log.warning("job %s runs untraced: %s", launch.job_id, exc)
    device = pin_gpu(launch.device)  # before torch: CUDA reads CUDA_VISIBLE_DEVICES when it starts
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if launch.niceness > 0:
        os.nice(launch.niceness)
    import torch  # after the niceness: imports are the slow part of the start

    torch.set_num_threads(launch.threads)
    torch.set_num_interop_threads(1)
    job_id = launch.job_id
    jobs = JobStore(launch.database)
    job = jobs.get(job_id)
    if job is None or job.state != "running" or job.runner != launch.runner_id:
        log.warning("job %s is not running (%s); nothing to do", job_id, job and job.state)
        return
    if job.spec.request_id is not None:  # every line of this process is about that request
        LOG_CONTEXT.set(LogContext(job.spec.request_id))
    jobs.set_pid(job_id, os.getpid())
    spec = job.spec
    attributes = {"promptserve.job": job_id, "promptserve.classifier": spec.train.name}
    try:
        with (
            tracing.root_span("job", spec.traceparent, attributes),  # in /adapt's trace
            job_publishing(launch.store, spec.train.name, enabled=launch.store_url is not None),
        ):  # the store sync of this host leaves the version to this process to upload
            _run(launch, jobs, job, device)
    finally:
        tracing.shutdown()  # export the job's spans before the process ends


def _run(launch: JobLaunch, jobs: JobStore, job: Job, device: str) -> None:
    job_id = launch.job_id
    monitor = Monitor(jobs, job_id, launch.runner_pid, launch.runner_id)
    try:
        if job.spec.data == UPLOAD:
            pull_uploads(launch, job.spec)
        outcome = _train(job.spec, launch.store, device, monitor, launch)
    except BaseException as exc:  # every way out is recorded; SystemExit included
        if not monitor.lost:
            _record_failure(jobs, job_id, exc, monitor)
        if not isinstance(exc, Exception):
            raise
        return
    version = outcome.version
    name = job.spec.train.name
    publish = outcome.summary.get("publish") or {}
    try:
        with tracing.span("publish"):
            if launch.store_url is not None:
                version = upload_version(jobs, name, version, launch)
            if publish.get("published") == "alias":
                _apply_alias(launch, name, version, job.spec.alias)
    except Exception as exc:
        _record_failure(jobs, job_id, exc, monitor)
        return
    result = {
        "classifier": name,
        "version": version,
        "seconds": outcome.summary["seconds"],
        "steps": outcome.summary["steps"],
        "final_loss": outcome.summary["final_loss"],
        **outcome.metrics,
        "published": publish.get("published", "alias"),
        "alias": job.spec.alias,
        "gate": publish.get("gate"),
    }
    if "auto" in outcome.summary:  # method auto: the leaderboard it chose the method by
        result["auto"] = outcome.summary["auto"]
    message = f"published {name} version {version}"
    if result["published"] == "candidate":
        message += f" as a candidate ({result['gate']['reason']})"
    runner_id = launch.runner_id
    if not jobs.finish(job_id, "succeeded", result=result, message=message, runner=runner_id):
        log.warning("job %s was ended by the service while it published", job_id)


def _train(spec: JobSpec, store: Path, device: str, monitor: Monitor, launch: JobLaunch) -> Any:
    """Run the spec's training request on this host's store and device, gated
    (`service.jobs.gate`)."""
    from promptserve.service.jobs.gate import make_gate
    from promptserve.training.api import train_classifier

    if launch.store_url is not None:  # the alias files as the store has them now
        mirror_of(launch).pull_aliases(spec.train.name)
    request = replace(spec.train, store=store, device=device)
    gate = make_gate(store, spec.train.name, spec.publish, spec.alias)
    return train_classifier(
        request,
        progress=monitor.progress,
        should_stop=monitor.should_stop,
        gate=gate,
        phase=tracing.span,  # a span per stage while tracing is on
    )


def _apply_alias(launch: JobLaunch, name: str, version: str, alias: str) -> None:
    from promptserve.service.jobs.gate import apply_alias

    mirror = mirror_of(launch) if launch.store_url is not None else None
    apply_alias(launch.store, name, version, alias, mirror)


def _record_failure(jobs: JobStore, job_id: str, exc: BaseException, monitor: Monitor) -> None:
    runner_id = monitor.runner_id
    if monitor.orphaned or isinstance(exc, SystemExit | KeyboardInterrupt):
        # stopped, not failed: the runner queues the job again (its reap, a hand-back at its
        # stop, the next start's recovery or the lease), as JOB_MAX_ATTEMPTS allows
        log.warning("job %s stopped before its end: left for its runner to queue again", job_id)
    elif isinstance(exc, TrainingCancelled):
        jobs.finish(job_id, "cancelled", message=f"job cancelled ({exc})", runner=runner_id)
    else:
        log.exception("job %s failed", job_id)
        error = {"reason": "error", "message": f"{type(exc).__name__}: {without_paths(str(exc))}"}
        message = f"job failed: {error['message']}"
        jobs.finish(job_id, "failed", error=error, message=message, runner=runner_id)


class Monitor:
    """The training loop's progress callback and cancellation check for one job."""

    def __init__(self, jobs: JobStore, job_id: str, runner_pid: int, runner_id: str) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.runner_pid = runner_pid
        self.parent = os.getppid()  # the runner, or the server that forked this process
        self.runner_id = runner_id
        self.orphaned = False
        self.lost = False  # another runner took the job over: write nothing more
        self._last_write = 0.0
        self._last_check = 0.0
        self._epoch = 0
        self._losses: list[float] = []
        self._cancel = False

    def progress(self, p: Any) -> None:  # a training.loop.Progress
        if p.epoch != self._epoch:
            self._end_epoch(p.epochs)
            self._epoch = p.epoch
        self._losses.append(p.loss)
        last = p.step == p.total_steps
        if last:
            self._end_epoch(p.epochs)
            self.jobs.add_event(self.job_id, "training done; scoring and exporting")
        now = time.monotonic()
        if not last and now - self._last_write < PROGRESS_EVERY_S:
            return
        self._last_write = now
        fields = ("epoch", "epochs", "step", "total_steps", "lr")
        state = {name: getattr(p, name) for name in fields}
        state |= {"loss": round(p.loss, 5), "eta_s": round(p.eta_s, 1)}
        self.jobs.set_progress(self.job_id, state)

    def _end_epoch(self, epochs: int) -> None:
        if not self._losses:
            return
        loss = sum(self._losses) / len(self._losses)
        self.jobs.add_event(
            self.job_id,
            f"epoch {self._epoch}/{epochs} done, mean loss {loss:.4f}",
            data={"epoch": self._epoch, "loss": round(loss, 5)},
        )
        self._losses = []

    def should_stop(self) -> bool:
        now = time.monotonic()
        if self._cancel or now - self._last_check < PROGRESS_EVERY_S:
            return self._cancel
        self._last_check = now
        if os.getppid() != self.parent or not runner_alive(self.runner_pid):
            self.orphaned = self._cancel = True
        elif not self.jobs.holds(self.job_id, self.runner_id):
            self.lost = self._cancel = True
        elif self.jobs.cancel_requested(self.job_id):
            self._cancel = True
        return self._cancel


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def describe_exit(code: int | None) -> str:
    """A job process's exit code in words: ``killed by SIGKILL``, ``exit code 1``."""
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
