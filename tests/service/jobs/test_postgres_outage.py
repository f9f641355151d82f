"""A real Postgres job database stopped under a running service, then started again: jobs
answer 503 jobs_unavailable with Retry-After while classification goes on, the runner's failing
polls are one line (and one more when it recovers), and jobs are served again by themselves."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time

import pytest

from tests.cluster.servers import Postgres, UnavailableError, _as_postgres_user, running_postgres
from tests.service.helpers import ClientFactory, png_bytes
from tests.service.jobs.helpers import assert_error
from tests.waiting import eventually

pytestmark = pytest.mark.anyio


def pg_ctl(server: Postgres, *args: str) -> None:
    """pg_ctl with the server's log file: a server started by it must not inherit a pipe of
    ours, or waiting for pg_ctl's output would wait for the server to exit."""
    log = str(server.data.parent / "log")
    command = [str(server.bin / "pg_ctl"), "-D", str(server.data), "-l", log, *args]
    subprocess.run(
        _as_postgres_user(command),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
    )


async def test_a_stopped_postgres_answers_503_and_jobs_come_back_when_it_does(
    client_factory: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("psycopg", reason="psycopg is absent: pip install -e '.[dev]'")
    try:
        postgres = running_postgres()
        server = postgres.__enter__()
    except UnavailableError as exc:
        pytest.skip(str(exc))
    try:
        settings = {"database_url": server.url, "job_db_timeout_s": 1, "max_concurrent_jobs": 0}
        async with client_factory(**settings) as (client, runtime):
            assert (await client.get("/jobs")).status_code == 200
            assert runtime.runner is not None
            runner = runtime.runner
            caplog.set_level(logging.INFO)
            pg_ctl(server, "-m", "fast", "-w", "stop")
            for _ in range(10):
                response = await client.get("/jobs")
                assert_error(response, 503, "jobs_unavailable", "cannot be reached")
                assert response.headers["retry-after"] == "5"
            files = [("images", ("x.png", png_bytes(), "image/png"))]
            assert (await client.post("/classify", files=files)).status_code == 200
            await eventually(lambda: runner.failures.failures >= 4, timeout=30)  # 2 s of polls
            pg_ctl(server, "-w", "restart")  # with the options it last ran with
            deadline = time.monotonic() + 30
            while (await client.get("/jobs")).status_code != 200:
                assert time.monotonic() < deadline, "jobs never came back"
                await asyncio.sleep(0.1)
            await eventually(lambda: runner.failures.failures == 0, timeout=30)
    finally:
        postgres.__exit__(None, None, None)
    polls = [r.getMessage() for r in caplog.records if "job runner poll" in r.getMessage()]
    assert len(polls) == 2, polls  # it failed; it works again
    assert "works again" in polls[1]
    requests = [r for r in caplog.records if "GET /jobs failed" in r.getMessage()]
    assert len(requests) == 10
    assert not [r for r in caplog.records if r.exc_info]
