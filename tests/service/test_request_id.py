"""One request id on every answer and in every line written for the request: the lines of the
handler, of the threads it hands work to, of the access log, and the job a ``POST /adapt``
queues (its record and events keep the id; a retry with a new id is still the same job).
The real processes (the engine of ``serve --workers 2``, a job process) are in
test_request_id_e2e.py."""

from __future__ import annotations

import logging

import pytest

from promptserve.service.logs import configure_logging
from tests.service.helpers import ClientFactory, b64, png_bytes
from tests.service.jobs.helpers import json_body

pytestmark = pytest.mark.anyio
IMAGE = {"images": [b64(png_bytes())]}


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog, with this process's logging set up as every process sets it up: our handler's
    filter gives every record its request id (the same record reaches caplog)."""
    configure_logging("info")
    caplog.set_level(logging.INFO, logger="promptserve")
    return caplog


def lines_of(caplog: pytest.LogCaptureFixture, request_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "request_id", None) == request_id]


async def test_every_answer_names_its_id_in_its_header_body_and_access_line(
    client_factory: ClientFactory, logged: pytest.LogCaptureFixture
) -> None:
    settings = {"api_key": "k", "max_inflight_requests": 1, "access_log": True}
    async with client_factory(**settings) as (client, _):
        auth = {"Authorization": "Bearer k"}
        ok = await client.post("/v1/classify", json=IMAGE, headers=auth)
        unauthorized = await client.get("/v1/classifiers", headers={"X-Request-ID": "no-key"})
        missing = await client.get("/v1/jobs/job-none", headers=auth)
        invalid = await client.post("/v1/classify", json={"images": 1}, headers=auth)
        long = await client.post(
            "/v1/classify", json=IMAGE, headers=auth | {"X-Request-ID": "a" * 129}
        )
        admission = next(m for m in _middlewares(client) if hasattr(m, "max_requests"))
        admission.flight.requests = 1  # as if a request were in flight: the next one is refused
        try:
            refused = await client.post(
                "/v1/classify", json=IMAGE, headers={"X-Request-ID": "full"}
            )
        finally:
            admission.flight.requests = 0
    answers = [ok, unauthorized, missing, invalid, long, refused]
    assert [a.status_code for a in answers] == [200, 401, 404, 422, 200, 429]
    assert len(ok.headers["X-Request-ID"]) == 32  # made here: a uuid4, hex
    assert long.headers["X-Request-ID"] != "a" * 129  # too long: replaced
    assert (unauthorized.headers["X-Request-ID"], refused.headers["X-Request-ID"]) == (
        "no-key",
        "full",
    )
    for answer in (unauthorized, missing, invalid, refused):
        assert answer.json()["error"]["request_id"] == answer.headers["X-Request-ID"]
    access = [r for r in logged.records if r.name == "promptserve.access"]
    logged_ids = [(r.request_id, r.status) for r in access]  # type: ignore[attr-defined]
    assert logged_ids == [(a.headers["X-Request-ID"], a.status_code) for a in answers]


def _middlewares(client: object) -> list[object]:
    """The built middleware stack of the app behind an in-process client, outermost first."""
    app = client._transport.app  # type: ignore[attr-defined]
    found, layer = [], app.middleware_stack
    while layer is not None:
        found.append(layer)
        layer = getattr(layer, "app", None)
    return found


async def test_lines_of_a_request_and_of_its_threads_carry_its_id(
    client_factory: ClientFactory, logged: pytest.LogCaptureFixture
) -> None:
    body = IMAGE | {"labels": ["red circle", "orange hexagon"]}  # a new label: encoded
    async with client_factory() as (client, _):
        answer = await client.post("/v1/classify", json=body, headers={"X-Request-ID": "new-1"})
    assert answer.status_code == 200, answer.text
    # the label encoder runs on its own thread: the context went with the work
    (loaded,) = [r for r in lines_of(logged, "new-1") if "text path" in r.getMessage()]
    assert loaded.threadName.startswith("labels")
    others = [r for r in logged.records if "text path" in r.getMessage() and r not in [loaded]]
    assert others == []


@pytest.mark.parametrize("enabled", [True, False])
async def test_the_access_log_is_one_line_per_answer_when_on(
    client_factory: ClientFactory, logged: pytest.LogCaptureFixture, enabled: bool
) -> None:
    async with client_factory(access_log=enabled) as (client, _):
        await client.post("/v1/classify", json=IMAGE, headers={"X-Request-ID": "acc-1"})
        await client.get("/v1/nothing", headers={"X-Request-ID": "acc-2"})
    access = [r for r in logged.records if r.name == "promptserve.access"]
    if not enabled:
        assert access == []
        return
    classified, unknown = access
    assert (classified.request_id, unknown.request_id) == ("acc-1", "acc-2")  # type: ignore[attr-defined]
    fields = ("method", "path", "status", "classifier", "version")
    assert [getattr(classified, f) for f in fields] == ["POST", "/v1/classify", 200, "default", "1"]
    assert classified.latency_ms > 0  # type: ignore[attr-defined]
    assert (unknown.status, unknown.path) == (404, "/v1/nothing")  # type: ignore[attr-defined]
    assert not hasattr(unknown, "classifier")
    assert "POST /v1/classify 200" in classified.getMessage()


async def test_a_job_keeps_the_id_of_the_request_that_made_it(
    client_factory: ClientFactory,
) -> None:
    async with client_factory(max_concurrent_jobs=0) as (client, _):  # the job stays queued
        headers = {"X-Request-ID": "adapt-1", "Idempotency-Key": "once"}
        made = await client.post("/v1/adapt", json=json_body(), headers=headers)
        retried = await client.post(
            "/v1/adapt", json=json_body(), headers=headers | {"X-Request-ID": "adapt-2"}
        )
        job_id = made.json()["id"]
        shown = (await client.get(f"/v1/jobs/{job_id}")).json()
        events = (await client.get(f"/v1/jobs/{job_id}/events")).json()["data"]
    assert made.status_code == 202, made.text
    assert made.json()["request_id"] == shown["request_id"] == "adapt-1"
    assert retried.json()["id"] == job_id  # the id is not part of what makes a job the same
    assert retried.json()["request_id"] == "adapt-1"
    assert events[0]["message"] == "job created"
    assert events[0]["data"]["request_id"] == "adapt-1"


async def test_an_unexpected_error_is_logged_under_the_request_id(
    client_factory: ClientFactory, logged: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(query: object) -> None:
        raise RuntimeError("boom")

    async with client_factory(access_log=True) as (client, runtime):
        monkeypatch.setattr(runtime, "classify", broken)
        client._transport.raise_app_exceptions = False  # type: ignore[attr-defined]
        answer = await client.post("/v1/classify", json=IMAGE, headers={"X-Request-ID": "oops"})
    assert answer.status_code == 500
    assert answer.headers["X-Request-ID"] == answer.json()["error"]["request_id"] == "oops"
    (failure,) = [r for r in lines_of(logged, "oops") if r.levelno == logging.ERROR]
    assert "failed" in failure.getMessage()
    assert failure.exc_info is not None  # the traceback is in the log, not the answer
    (access,) = [r for r in lines_of(logged, "oops") if r.name == "promptserve.access"]
    assert access.status == 500  # type: ignore[attr-defined]
