"""How job processes are started (`service.jobs.starting`): a CPU job is forked from a server
that imported torch and open_clip once, a CUDA job is spawned; a forked job process runs with
its runner's environment and working directory at the launch, not the server's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from promptserve.service.jobs.process import JobLaunch
from promptserve.service.jobs.starting import job_context, job_server_ready
from promptserve.service.jobs.stopping import terminate
from tests.models.job_probe import report_launch_context
from tests.service.helpers import make_settings
from tests.waiting import wait_until


def test_cpu_jobs_are_forked_from_a_server_and_cuda_jobs_spawned() -> None:
    assert job_context("cpu").get_start_method() == "forkserver"
    assert job_context("cuda").get_start_method() == "spawn"
    assert job_context("cuda:1").get_start_method() == "spawn"


def launch_probe(tmp_path: Path) -> tuple[bool, str | None, str]:
    """One job process started as the runner starts a CPU job, for a job that does not exist."""
    settings = make_settings(tmp_path / "store")
    launch = JobLaunch.of(settings, str(tmp_path / "jobs.db"), "no-such-job", "cpu", "probe")
    context = job_context("cpu")
    queue = context.Queue()
    process = context.Process(target=report_launch_context, args=(queue, launch))
    process.start()
    try:
        reported: tuple[bool, str | None, str] = queue.get(timeout=300)
    finally:
        process.join(30)
    assert process.exitcode == 0
    return reported


def test_a_forked_job_process_takes_its_runners_environment_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOB_PROBE_MARK", "first")
    torch_loaded, probe, cwd = launch_probe(tmp_path)  # the server runs from here on
    assert torch_loaded  # imported by the server, not by the job
    assert (probe, cwd) == ("first", os.getcwd())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("JOB_PROBE_MARK", "second")
    monkeypatch.chdir(elsewhere)
    torch_loaded, probe, cwd = launch_probe(tmp_path)
    assert torch_loaded
    assert (probe, cwd) == ("second", str(elsewhere))


def test_stopping_a_forked_job_process_that_ended_sends_no_signal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the job server reaps it at once: its pid may be another process's by now
    process = job_context("cpu").Process(target=int)
    process.start()
    pid = process.pid
    assert pid is not None
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=120, what="the process gone")
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    terminate(process, 5.0)
    assert sent == []
    assert process.exitcode == 0


def test_the_job_server_gets_ready_in_the_background() -> None:
    assert job_server_ready("cuda:0")  # spawned: nothing to wait for
    wait_until(lambda: job_server_ready("cpu"), timeout=300, what="the job server ready")
