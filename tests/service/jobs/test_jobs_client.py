"""The job client: the /jobs routes read, cancel and wake through it, in one process and from
an API worker of ``serve --workers N`` (whose client wakes the engine process's runner)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from promptserve.service.jobs.client import JobClient
from promptserve.service.remote.engine import EngineServer
from promptserve.service.runtime import Runtime
from tests.service.helpers import ClientFactory, make_settings
from tests.service.jobs.helpers import assert_error, json_body, post_json

pytestmark = pytest.mark.anyio


async def test_the_routes_get_cancel_and_wake_through_the_job_client(
    client_factory: ClientFactory,
) -> None:
    async with client_factory(max_concurrent_jobs=0) as (client, runtime):
        woken: list[str] = []
        runtime.job_client = JobClient(
            runtime.jobs, runtime.job_files, wake=lambda: woken.append("wake")
        )
        job = (await post_json(client, json_body())).json()
        assert woken == ["wake"]  # a queued job wakes the runner
        fetched = await client.get(f"/jobs/{job['id']}")
        assert fetched.json() == job
        assert_error(await client.get("/jobs/job-none"), 404, "unknown_job")
        cancelled = await client.post(f"/jobs/{job['id']}/cancel")
        assert cancelled.json()["state"] == "cancelled"
        assert woken == ["wake", "wake"]  # and so does a cancel
        assert not runtime.job_files.uploads(job["id"]).exists()
        assert_error(await client.post(f"/jobs/{job['id']}/cancel"), 409, "job_finished")
        assert woken == ["wake", "wake"]  # an ended job wakes nobody
        events = await client.get(f"/jobs/{job['id']}/events")
        assert events.json()["data"][-1]["message"] == "job cancelled before it started"


async def test_an_api_workers_job_client_wakes_the_engine_processs_runner(
    store: Path, tmp_path: Path
) -> None:
    settings = make_settings(store, max_concurrent_jobs=0)
    engine = Runtime(settings)  # not started: only its runner's wake is asked for
    woken = asyncio.Event()
    engine.job_client = JobClient(engine.jobs, engine.job_files, wake=woken.set)
    socket_path = tmp_path / "engine.sock"
    unix = await asyncio.start_unix_server(EngineServer(engine).handle, path=str(socket_path))
    worker = Runtime(settings.model_copy(update={"engine_socket": socket_path}))
    try:
        worker.job_client.wake()
        await asyncio.wait_for(woken.wait(), timeout=10)
    finally:
        await worker.stop()
        unix.close()
        await engine.stop()
