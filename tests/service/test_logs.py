"""Process logging comes from one module (service.logs): every process kind configures it
through `configure_logging`, nothing but the entry point imports the CLI, and a job host
(``promptserve worker``) and a job process write the same line format."""

from __future__ import annotations

import ast
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from promptserve.service import app, cli, logs
from promptserve.service.jobs import process
from promptserve.service.jobs.process import JobLaunch, run_job
from promptserve.service.jobs.store import JobStore
from promptserve.service.remote import engine
from promptserve.training import cli as training_cli

REPO = Path(__file__).resolve().parents[2]
# training.logs.TEXT_FORMAT:
# "%(asctime)s %(levelname)s %(processName)s %(name)s [%(request_id)s]: %(message)s"
LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<process>\S+) "
    r"(?P<logger>promptserve\.[\w.]+) \[(?P<request_id>\S+)\]: (?P<message>.*)$",
    re.MULTILINE,
)


def test_every_process_kind_configures_logging_through_service_logs() -> None:
    # serve and promptserve worker (cli), an API worker (app), the engine process, a job
    # process, and the training commands (promptserve train, eval, ...)
    for module in (cli, app, engine, process, training_cli):
        assert module.configure_logging is logs.configure_logging, module.__name__


def test_only_the_entry_point_imports_the_cli() -> None:
    importers = []
    for path in sorted((REPO / "service").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "promptserve.service.cli":
                importers.append(path.relative_to(REPO).as_posix())
    assert importers == []


def test_a_job_host_and_a_job_process_log_the_same_lines(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTSERVE_")}
    host = subprocess.Popen(
        [sys.executable, "-m", "promptserve.service.cli", "worker", "--slots", "1"],
        cwd=REPO,
        env=environment | {"PROMPTSERVE_STORE": str(tmp_path / "store")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # a job process told of a job that is not there logs one warning and ends
    jobs = JobStore(tmp_path / "jobs.db")
    launch = JobLaunch(
        database=jobs.locator,
        job_id="job-none",
        store=tmp_path / "store",
        device="cpu",
        threads=1,
        niceness=0,
        runner_id="host:1:a",
        runner_pid=os.getpid(),
    )
    context = multiprocessing.get_context("spawn")
    job = context.Process(target=run_job, args=(launch,), name="promptserve-job-none")
    job.start()
    job.join(120)
    assert job.exitcode == 0
    job_line = LINE.search(capfd.readouterr().err)
    assert job_line is not None
    assert job_line["process"] == "promptserve-job-none"
    assert (job_line["level"], job_line["logger"]) == (
        "WARNING",
        "promptserve.service.jobs.process",
    )
    try:
        deadline = time.monotonic() + 120
        output = ""
        assert host.stdout is not None
        while "job host ready" not in output and time.monotonic() < deadline:
            output += host.stdout.readline()
            assert host.poll() is None, output
    finally:
        host.send_signal(signal.SIGTERM)
        host.wait(timeout=60)
    host_line = LINE.search(output)
    assert host_line is not None, output
    assert host_line["process"] == "MainProcess"
    assert host_line["logger"].startswith("promptserve.service.jobs.")
