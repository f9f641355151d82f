"""The target of a spawned job process in `test_engine_devices`; kept in its own module
because the test module loads torch, and the child must import this one without it."""

from __future__ import annotations

import os
import sys
from typing import Any


def report_job_environment(queue: Any, database: str, store: str, device: str) -> None:
    """Run `run_job` (for a job that does not exist), then report whether torch was loaded
    before it and what ``CUDA_VISIBLE_DEVICES`` the process ended with."""
    torch_before = "torch" in sys.modules
    from pathlib import Path

    from promptserve.service.jobs.process import JobLaunch, run_job

    torch_before = torch_before or "torch" in sys.modules
    launch = JobLaunch(
        database=database,
        job_id="no-such-job",
        store=Path(store),
        device=device,
        threads=1,
        niceness=0,
        runner_id="probe",
        runner_pid=os.getppid(),
    )
    run_job(launch)
    queue.put((torch_before, os.environ.get("CUDA_VISIBLE_DEVICES")))


def report_launch_context(queue: Any, launch: Any) -> None:
    """Run `run_job` with `launch` (for a job that does not exist), then report whether torch was
    loaded before it, and the ``JOB_PROBE_MARK`` variable and working directory it ended
    with."""
    torch_before = "torch" in sys.modules
    from promptserve.service.jobs.process import run_job

    run_job(launch)
    queue.put((torch_before, os.environ.get("JOB_PROBE_MARK"), os.getcwd()))
