"""A job runner's stop waits for its terminated job processes once, not once per process: a
worker with several slots still exits within its container's stop grace."""

from __future__ import annotations

import multiprocessing
import signal
import time
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from promptserve.service.jobs import runner as runner_module
from promptserve.service.jobs.runner import JobRunner
from promptserve.service.jobs.store import JobStore
from promptserve.service.settings import Settings


def deaf(ready: Event) -> None:
    """A job process that ignores SIGTERM (stuck in a long native call, say)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    time.sleep(120)


def test_stop_kills_deaf_job_processes_after_one_shared_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "STOP_WAIT_S", 2.0)
    runner = JobRunner(JobStore(tmp_path / "jobs.db"), Settings(store=tmp_path / "store"))
    context = multiprocessing.get_context("spawn")
    processes = []
    for name in ("job-a", "job-b", "job-c"):
        ready = context.Event()
        process = context.Process(target=deaf, args=(ready,), daemon=True)
        process.start()
        assert ready.wait(120)
        runner.processes.procs[name] = process
        processes.append(process)
    start = time.monotonic()
    runner._stop_processes()
    elapsed = time.monotonic() - start
    assert all(p.exitcode == -signal.SIGKILL for p in processes)
    assert 2.0 <= elapsed < 5.0  # one wait of STOP_WAIT_S, not three (6 s)
