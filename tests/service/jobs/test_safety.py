"""The job side's safety checks, in process: a job never runs twice at once and never publishes
behind the back of the runner that owns it.

- a job process stops, publishing nothing, when another runner took its job over (its lease
  ran out), and when its runner's process is gone (it was orphaned);
- a runner stops every job process once the job store has been unreachable for half a lease,
  and at once the one whose job another runner took over;
- a runner reaps a job process that died without ending its job, and queues the job again
  until its last attempt;
- at start-up a runner queues again (or, at the last attempt, fails) the jobs a dead runner of
  its host left running, and leaves alone those of a live runner and those of other hosts
  (their leases decide).

The job process is `run_job` itself, with its training replaced by a loop of steps that asks
`should_stop` between steps as the real loop does; the runner's job processes are stand-ins
that record being terminated.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from promptserve.service.jobs import process as process_module
from promptserve.service.jobs import runner as runner_module
from promptserve.service.jobs.housekeeping import Housekeeping, JobFiles
from promptserve.service.jobs.process import run_job
from promptserve.service.jobs.runner import JobRunner
from promptserve.service.jobs.store import Job, JobStore
from promptserve.service.settings import Settings
from promptserve.training.errors import TrainingCancelled
from tests.service.jobs.helpers import SPEC, job_launch

RUNNER = "thishost:111:aaaaaaaa"
OTHER = "otherhost:222:bbbbbbbb"
STEPS = 6


@pytest.fixture
def jobs(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.db")


def running_job(jobs: JobStore, runner: str = RUNNER, lease_s: float = 60.0) -> Job:
    jobs.create(SPEC, fingerprint=str(time.monotonic_ns()))
    job = jobs.claim_next(runner, lease_s)
    assert job is not None
    return job


def take_over(jobs: JobStore, job_id: str, runner: str = OTHER) -> None:
    """What happens to a starved runner's job: its lease runs out, the job is queued again and
    another runner claims it."""
    with jobs.db.connect() as db:
        db.execute("UPDATE jobs SET lease_until = ? WHERE id = ?", (time.time() - 1, job_id))
    assert [job.id for job in jobs.expire_leases(max_attempts=3)] == [job_id]
    claimed = jobs.claim_next(runner, 60.0)
    assert claimed is not None
    assert claimed.id == job_id


# --- the job process -------------------------------------------------------------------------


class Training:
    """`_train` as the job process calls it: STEPS steps, `should_stop` asked after each (the
    real loop asks between steps and before export); `at_step[i]` runs before step i. A run
    that gets through every step publishes a version, as `train_classifier` does."""

    def __init__(self) -> None:
        self.at_step: dict[int, Callable[[], None]] = {}
        self.steps = 0
        self.published: list[str] = []

    def __call__(self, spec: Any, store: Path, device: str, monitor: Any, launch: Any) -> Any:
        for step in range(STEPS):
            self.at_step.get(step, lambda: None)()
            self.steps += 1
            if monitor.should_stop():
                raise TrainingCancelled("stopped between steps")
        self.published.append(spec.train.name)
        summary = {"seconds": 0.1, "steps": STEPS, "final_loss": 0.5}
        return SimpleNamespace(version="1", summary=summary, metrics={})


@pytest.fixture
def training(monkeypatch: pytest.MonkeyPatch) -> Iterator[Training]:
    fake = Training()
    monkeypatch.setattr(process_module, "_train", fake)
    monkeypatch.setattr(process_module, "PROGRESS_EVERY_S", 0.0)  # check at every step
    # run_job sizes torch's thread pools for its own process: not this one's
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(torch, "set_num_interop_threads", lambda n: None)
    sigterm = signal.getsignal(signal.SIGTERM)
    yield fake
    signal.signal(signal.SIGTERM, sigterm)


def test_a_job_process_whose_runner_is_alive_runs_to_the_end_and_publishes(
    jobs: JobStore, tmp_path: Path, training: Training
) -> None:
    job = running_job(jobs)
    run_job(job_launch(jobs, job, tmp_path, runner_pid=os.getppid()))
    assert training.published == ["demo"]
    done = jobs.get(job.id)
    assert done is not None
    assert done.state == "succeeded"
    assert done.result is not None
    assert done.result["version"] == "1"


def test_a_job_process_whose_job_was_taken_over_stops_and_writes_nothing(
    jobs: JobStore, tmp_path: Path, training: Training
) -> None:
    job = running_job(jobs)
    training.at_step[2] = lambda: take_over(jobs, job.id)
    run_job(job_launch(jobs, job, tmp_path, runner_pid=os.getppid()))
    assert training.published == []
    assert training.steps == 3  # it stopped at the first check after the takeover
    now = jobs.get(job.id)
    assert now is not None
    # the job is the other runner's, untouched: no end, no error, no event from the old process
    assert (now.state, now.runner, now.error, now.result) == ("running", OTHER, None, None)
    messages = [event.message for event in jobs.events(job.id)]
    assert not [m for m in messages if "cancel" in m or "interrupted" in m or "failed" in m]


def test_a_job_process_whose_runner_is_gone_stops_and_leaves_the_job_to_be_queued_again(
    jobs: JobStore, tmp_path: Path, training: Training
) -> None:
    job = running_job(jobs)
    # its runner's process is not its parent any more: the service crashed, the job process
    # was re-parented (to init, or a subreaper)
    run_job(job_launch(jobs, job, tmp_path, runner_pid=os.getppid() + 100_000))
    assert training.published == []
    assert training.steps == 1
    now = jobs.get(job.id)
    assert now is not None
    # not failed: the next start's recovery (or the lease) queues it again
    assert (now.state, now.runner, now.error) == ("running", job.runner, None)


def test_a_job_process_whose_parent_changes_stops_though_the_runners_pid_lives(
    jobs: JobStore, tmp_path: Path, training: Training, monkeypatch: pytest.MonkeyPatch
) -> None:
    # forked from the job server: the server exited with its runner, and the pid was reused
    job = running_job(jobs)
    parent = os.getppid()
    training.at_step[1] = lambda: monkeypatch.setattr(os, "getppid", lambda: parent + 1)
    run_job(job_launch(jobs, job, tmp_path, runner_pid=os.getpid()))
    assert training.published == []
    assert training.steps == 2  # it stopped at the first check after the change
    now = jobs.get(job.id)
    assert now is not None
    assert (now.state, now.runner, now.error) == ("running", job.runner, None)


def test_a_job_process_stops_when_its_job_is_cancelled(
    jobs: JobStore, tmp_path: Path, training: Training
) -> None:
    job = running_job(jobs)
    training.at_step[1] = lambda: jobs.request_cancel(job.id)  # type: ignore[func-returns-value]
    run_job(job_launch(jobs, job, tmp_path, runner_pid=os.getppid()))
    assert training.published == []
    assert training.steps == 2
    now = jobs.get(job.id)
    assert now is not None
    assert now.state == "cancelled"


def test_a_launch_for_a_job_no_longer_ours_does_nothing(
    jobs: JobStore, tmp_path: Path, training: Training
) -> None:
    job = running_job(jobs)
    take_over(jobs, job.id)  # before the process even started
    run_job(job_launch(jobs, job, tmp_path, runner_pid=os.getppid()))
    assert training.steps == 0
    now = jobs.get(job.id)
    assert now is not None
    assert (now.state, now.runner) == ("running", OTHER)


# --- the runner -------------------------------------------------------------------------------


class StandIn:
    """A job process that is alive until terminated, or has exited with `exitcode`."""

    def __init__(self, exitcode: int | None = None) -> None:
        self.exitcode = exitcode
        self.terminated = False
        self.pid = 999_999

    def terminate(self) -> None:
        self.terminated = True
        self.exitcode = -signal.SIGTERM

    def kill(self) -> None:
        self.terminate()

    def join(self, timeout: float | None = None) -> None:
        pass

    def is_alive(self) -> bool:
        return self.exitcode is None


def runner_with(jobs: JobStore, tmp_path: Path, count: int) -> tuple[JobRunner, dict[str, StandIn]]:
    """A runner (lease 30 s) holding `count` running jobs, each in a stand-in process."""
    runner = JobRunner(jobs, Settings(store=tmp_path / "store", job_lease_s=30))
    processes = {}
    for _ in range(count):
        job = running_job(jobs, runner.id, runner.lease_s)
        processes[job.id] = StandIn()
        runner.processes.procs[job.id] = processes[job.id]  # type: ignore[assignment]
    return runner, processes


def unreachable(*args: object, **kwargs: object) -> Any:
    raise sqlite3.OperationalError("database is locked")


@pytest.mark.parametrize("fraction", [0.0, 0.4])
def test_a_runner_keeps_its_jobs_while_the_store_is_unreachable_for_less_than_half_a_lease(
    jobs: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fraction: float
) -> None:
    runner, processes = runner_with(jobs, tmp_path, 2)
    runner._last_heartbeat = time.monotonic() - fraction * runner.lease_s
    monkeypatch.setattr(runner.jobs, "heartbeat", unreachable)
    with pytest.raises(sqlite3.OperationalError):  # the loop logs it and polls again
        runner.poll()
    assert not any(p.terminated for p in processes.values())
    assert set(runner.processes.procs) == set(processes)


def test_a_runner_stops_every_job_once_the_store_is_unreachable_for_half_a_lease(
    jobs: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, processes = runner_with(jobs, tmp_path, 2)
    runner._last_heartbeat = time.monotonic() - 0.6 * runner.lease_s
    monkeypatch.setattr(runner.jobs, "heartbeat", unreachable)
    with pytest.raises(sqlite3.OperationalError):
        runner.poll()
    assert all(p.terminated for p in processes.values())
    assert runner.processes.procs == {}  # forgotten: not reaped as "died" later, and slots free


def test_a_heartbeat_that_got_through_restarts_the_half_lease_clock(
    jobs: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, processes = runner_with(jobs, tmp_path, 1)
    runner._last_heartbeat = time.monotonic() - 0.6 * runner.lease_s
    runner.poll()  # the store answers: the leases are renewed
    job_id = next(iter(processes))
    job = jobs.get(job_id)
    assert job is not None
    assert job.lease_until is not None
    assert job.lease_until > time.time() + 0.9 * runner.lease_s
    monkeypatch.setattr(runner.jobs, "heartbeat", unreachable)
    with pytest.raises(sqlite3.OperationalError):
        runner.poll()
    assert not processes[job_id].terminated


def test_a_job_queued_again_while_its_runner_still_runs_it_gets_no_second_process(
    jobs: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the runner's poll is busy starting a process (the first CPU job starts the job server)
    # past the lease; another runner queues the job again, and this poll claims it back
    runner = JobRunner(jobs, Settings(store=tmp_path / "store", max_concurrent_jobs=2))
    job = running_job(jobs, runner.id, runner.lease_s)
    process = StandIn()
    runner.processes.procs[job.id] = process  # type: ignore[assignment]
    with jobs.db.connect() as db:
        db.execute("UPDATE jobs SET lease_until = ? WHERE id = ?", (time.time() - 1, job.id))
    assert [j.id for j in jobs.expire_leases(max_attempts=3)] == [job.id]
    started: list[str] = []
    monkeypatch.setattr(runner_module, "job_server_ready", lambda device: True)
    monkeypatch.setattr(runner_module, "job_context", lambda device: started.append(device))
    runner._start_queued()
    assert started == []  # no second process for the job
    assert runner.processes.procs == {job.id: process}
    assert not process.terminated
    now = jobs.get(job.id)
    assert now is not None
    assert (now.state, now.runner) == ("running", runner.id)


def test_a_runner_claims_no_cpu_job_until_its_job_server_is_ready(
    jobs: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = JobRunner(jobs, Settings(store=tmp_path / "store"))
    jobs.create(SPEC, fingerprint="waits")
    monkeypatch.setattr(runner_module, "job_server_ready", lambda device: False)
    runner._start_queued()
    assert runner.processes.procs == {}
    assert [job.state for job in jobs.in_state("queued")] == ["queued"]  # unleased, waiting


def test_a_runner_stops_at_once_the_process_of_a_job_taken_over(
    jobs: JobStore, tmp_path: Path
) -> None:
    runner, processes = runner_with(jobs, tmp_path, 2)
    lost, kept = processes
    take_over(jobs, lost)
    runner.poll()
    assert processes[lost].terminated
    assert not processes[kept].terminated
    assert set(runner.processes.procs) == {kept}
    now = jobs.get(lost)
    assert now is not None
    assert (now.state, now.runner) == ("running", OTHER)  # the other runner's, untouched


def test_a_job_its_process_ended_is_not_stopped_but_reaped(jobs: JobStore, tmp_path: Path) -> None:
    runner, processes = runner_with(jobs, tmp_path, 1)
    (job_id,) = processes
    assert jobs.finish(job_id, "succeeded", result={"version": "1"}, runner=runner.id)
    runner.poll()  # not held any more (ended), the process not yet exited: left alone
    assert not processes[job_id].terminated
    assert set(runner.processes.procs) == {job_id}
    processes[job_id].exitcode = 0
    runner.poll()
    assert runner.processes.procs == {}
    done = jobs.get(job_id)
    assert done is not None
    assert done.state == "succeeded"  # reaping does not touch an ended job


def test_a_job_process_that_died_queues_its_job_again_until_its_last_attempt(
    jobs: JobStore, tmp_path: Path
) -> None:
    runner, processes = runner_with(jobs, tmp_path, 2)  # JOB_MAX_ATTEMPTS: 2 (the default)
    died, alive = processes
    processes[died].exitcode = -signal.SIGKILL  # the OOM killer, say
    runner._start_queued = lambda: None  # type: ignore[method-assign]  # leave it queued
    runner.poll()
    assert set(runner.processes.procs) == {alive}
    job = jobs.get(died)
    assert job is not None
    assert (job.state, job.attempts, job.error) == ("queued", 1, None)
    other = jobs.get(alive)
    assert other is not None
    assert other.state == "running"
    # its second run dies too: that was the last attempt
    again = jobs.claim_next(runner.id, runner.lease_s)
    assert again is not None
    assert again.id == died
    processes[died] = StandIn()
    processes[died].exitcode = -signal.SIGKILL
    runner.processes.procs[died] = processes[died]  # type: ignore[assignment]
    runner.poll()
    job = jobs.get(died)
    assert job is not None
    assert (job.state, job.attempts) == ("failed", 2)
    assert job.error is not None
    assert job.error["reason"] == "worker_died"
    assert "killed by SIGKILL" in job.error["message"]


# --- recovery at start-up ---------------------------------------------------------------------


def test_recovery_fails_the_jobs_a_dead_runner_of_this_host_left_running(
    jobs: JobStore, tmp_path: Path
) -> None:
    host = socket.gethostname()
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(gone.stdout)  # a process of this host that has exited
    left = running_job(jobs, f"{host}:{dead_pid}:cccccccc")
    live = running_job(jobs, f"{host}:{os.getpid()}:dddddddd")  # another runner here, alive
    remote = running_job(jobs, f"elsewhere:{dead_pid}:eeeeeeee")  # its lease decides
    files = JobFiles(tmp_path / "jobs")
    for job in (left, live, remote):
        files.uploads(job.id).mkdir(parents=True)
        (files.uploads(job.id) / "0.png").write_bytes(b"png")
    me = f"{host}:{os.getpid()}:ffffffff"
    assert Housekeeping(jobs, files, me, retention_s=86_400).recover() == [left.id]
    failed = jobs.get(left.id)
    assert failed is not None
    assert failed.state == "failed"
    assert failed.error is not None
    assert failed.error["reason"] == "interrupted"
    assert not files.uploads(left.id).exists()
    for job in (live, remote):
        now = jobs.get(job.id)
        assert now is not None
        assert (now.state, now.runner) == ("running", job.runner)
        assert files.uploads(job.id).is_dir()


def test_recovery_queues_a_job_left_running_again_while_it_has_attempts_left(
    jobs: JobStore, tmp_path: Path
) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    host = socket.gethostname()
    left = running_job(jobs, f"{host}:{int(gone.stdout)}:cccccccc")
    files = JobFiles(tmp_path / "jobs")
    files.uploads(left.id).mkdir(parents=True)
    (files.uploads(left.id) / "0.png").write_bytes(b"png")
    me = f"{host}:{os.getpid()}:ffffffff"
    housekeeping = Housekeeping(jobs, files, me, retention_s=86_400, max_attempts=2)
    assert housekeeping.recover() == [left.id]
    now = jobs.get(left.id)
    assert now is not None
    assert (now.state, now.runner, now.attempts) == ("queued", None, 1)
    assert files.uploads(left.id).is_dir()  # its next run needs them


def test_recovery_fails_a_running_job_without_a_runner(jobs: JobStore, tmp_path: Path) -> None:
    """A job left running by a version before leases names no runner."""
    job, _ = jobs.create(SPEC, fingerprint="old")
    assert jobs.claim(job.id)  # no runner
    me = f"{socket.gethostname()}:{os.getpid()}:ffffffff"
    housekeeping = Housekeeping(jobs, JobFiles(tmp_path / "jobs"), me, retention_s=86_400)
    assert housekeeping.recover() == [job.id]
    now = jobs.get(job.id)
    assert now is not None
    assert now.state == "failed"
