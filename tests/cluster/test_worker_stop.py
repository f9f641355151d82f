"""`promptserve worker` as a host runs it: SIGTERM mid-job hands the job back, uncounted, and
stops its job process; start-up clears what killed writes left in the worker's own store.

One API process (serving only) and one worker share a SQLite job store through one jobs folder,
as one host with a local store and a separate job process pool would.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from promptserve.models.artifact import TEMP_PREFIX
from promptserve.service.jobs.store import JobStore
from tests.cluster.servers import start_worker
from tests.service.jobs.helpers import AUTH, JOB_ENV, shapes, submit
from tests.service.servers import start_server, stop_server
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_hands_the_running_job_back_uncounted(mini_store: Path, tmp_path: Path) -> None:
    env = JOB_ENV | {"PROMPTSERVE_JOBS_DIR": str(tmp_path / "jobs")}
    # a staging folder an export killed on the worker's host left behind: nobody holds it
    worker_store = tmp_path / "worker0-store"
    leftover = worker_store / "parts" / f"{TEMP_PREFIX}export-killed"
    leftover.mkdir(parents=True)
    (leftover / "classes.safetensors").write_bytes(b"half written")

    api = start_server(
        mini_store, tmp_path / "api.log", timeout=300, PROMPTSERVE_MAX_CONCURRENT_JOBS="0", **env
    )
    worker = start_worker(tmp_path, 0, env)
    try:
        wait_until(lambda: not leftover.exists(), timeout=120, what="the leftover removed")
        with httpx.Client(base_url=api.url, headers=AUTH, timeout=60) as http:
            job = submit(http, shapes("train", 4), name="parts", method="coop", epochs=200)
        jobs = JobStore(tmp_path / "jobs" / "jobs.db")

        def training() -> bool:
            row = jobs.get(job["id"])
            return row is not None and row.state == "running" and bool(row.progress)

        wait_until(training, timeout=180, what="the job training on the worker")
        row = jobs.get(job["id"])
        assert row is not None
        assert row.runner is not None
        assert row.pid is not None
        assert row.runner.split(":")[1] == str(worker.pid)
        job_pid = row.pid

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=90) == 0
        assert not _alive(job_pid), "the job process outlived its worker"
        back = jobs.get(job["id"])
        assert back is not None
        assert back.state == "queued"
        assert back.attempts == 0  # a stop is no failure of the job
        assert back.runner is None
        messages = [event.message for event in jobs.events(job["id"], limit=1000)]
        assert any("handed the job back" in message for message in messages)
        assert not (worker_store / "parts").exists() or not any(
            p.name.isdigit() for p in (worker_store / "parts").iterdir()
        ), "a stopped job published a version"
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        stop_server(api)
