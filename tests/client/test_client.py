"""`Client` and `AsyncClient` over a fake /v1 service (httpx.MockTransport): retries, typed
errors, the upload body, waiting for a job with its progress bar, configuration from the
environment. Each test runs on both clients through `run`."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from promptserve.client import (
    APIConnectionError,
    AsyncClient,
    AuthenticationError,
    Client,
    JobFailed,
    JobTimeout,
    RateLimitError,
    RetryPolicy,
    UnprocessableError,
)
from tests.client.mock_server import FakeService, classify_body, error, job_body, ok

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
FAST = RetryPolicy(attempts=3, backoff=0.0, max_backoff=0.0)


@pytest.fixture(params=["sync", "async"])
def run(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """run(fake, lambda client: client.method(...), **client_kwargs): the answer, from the sync
    client or the async one."""

    def call(fake: FakeService, use: Callable[[Any], Any], **kwargs: Any) -> Any:
        kwargs = {"retries": FAST, "progress": False, **kwargs}
        if request.param == "sync":
            with Client("http://fake", transport=fake.sync(), **kwargs) as client:
                return use(client)

        async def main() -> Any:
            async with AsyncClient(
                "http://fake", transport=fake.asynchronous(), **kwargs
            ) as client:
                answer = use(client)
                return await answer if inspect.isawaitable(answer) else answer

        return asyncio.run(main())

    return call


def busy(code: str = "overloaded", after: str = "0") -> httpx.Response:
    return error(429, code, "busy", headers={"Retry-After": after})


def test_a_429_is_retried_after_its_retry_after(run: Callable[..., Any]) -> None:
    fake = FakeService().on("POST", "/v1/classify", busy(), busy(), ok(classify_body()))
    result = run(fake, lambda c: c.classify(PNG, top_k=1))
    assert result.labels == ["red star"]
    assert len(fake.requests) == 3
    assert fake.requests[0].content == fake.requests[2].content  # the same body each time


def test_a_503_is_retried_too(run: Callable[..., Any]) -> None:
    fake = FakeService().on("GET", "/v1/classifiers", error(503, "not_ready"), ok(
        {"default": "default", "classifiers": []}))  # fmt: skip
    assert run(fake, lambda c: c.classifiers()).default == "default"
    assert len(fake.requests) == 2


def test_retries_run_out_into_a_typed_error(run: Callable[..., Any]) -> None:
    fake = FakeService().on("POST", "/v1/classify", busy())
    with pytest.raises(RateLimitError) as raised:
        run(fake, lambda c: c.classify(PNG))
    assert (raised.value.code, raised.value.request_id, raised.value.status) == (
        "overloaded", "req-123", 429)  # fmt: skip
    assert len(fake.requests) == FAST.attempts


def test_no_retries_when_turned_off(run: Callable[..., Any]) -> None:
    fake = FakeService().on("POST", "/v1/classify", busy(), ok(classify_body()))
    with pytest.raises(RateLimitError):
        run(fake, lambda c: c.classify(PNG), retries=0)
    assert len(fake.requests) == 1


def test_a_long_retry_after_is_raised_at_once(run: Callable[..., Any]) -> None:
    fake = FakeService().on("POST", "/v1/adapt", busy("too_many_jobs", "900"))
    with pytest.raises(RateLimitError) as raised:
        run(fake, lambda c: c.adapt("parts", examples=[(PNG, "a"), (PNG, "b")]))
    assert raised.value.retry_after == 900
    assert len(fake.requests) == 1


def test_adapt_is_retried_with_one_idempotency_key(run: Callable[..., Any]) -> None:
    fake = FakeService().on("POST", "/v1/adapt", busy("too_many_jobs"), ok(job_body(), 202))
    job = run(fake, lambda c: c.adapt("parts", examples=[(PNG, "a"), (PNG, "b")], epochs=2))
    assert job.id == "job-1"
    assert job.state == "queued"
    keys = {r.headers["Idempotency-Key"] for r in fake.requests}
    assert len(fake.requests) == 2
    assert len(keys) == 1


def test_other_errors_are_not_retried(run: Callable[..., Any]) -> None:
    fields = [{"path": ["body", "top_k"], "message": "must be >= 1"}]
    fake = FakeService().on(
        "POST", "/v1/classify", error(422, "invalid_request", "top_k", fields=fields)
    )
    with pytest.raises(UnprocessableError) as raised:
        run(fake, lambda c: c.classify(PNG, top_k=0))
    assert [str(f) for f in raised.value.fields] == ["top_k: must be >= 1"]
    assert len(fake.requests) == 1


def test_the_api_key_from_the_argument_or_the_environment(
    run: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def needs_key(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") != "Bearer s3cret":
            return error(401, "unauthorized", "missing or wrong API key")
        return ok({"default": "default", "classifiers": []})

    fake = FakeService().on("GET", "/v1/classifiers", needs_key)
    with pytest.raises(AuthenticationError):
        run(fake, lambda c: c.classifiers())
    assert run(fake, lambda c: c.classifiers(), api_key="s3cret").default == "default"
    monkeypatch.setenv("PROMPTSERVE_API_KEY", "s3cret")
    assert run(fake, lambda c: c.classifiers()).default == "default"


def test_the_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Client().url == "http://127.0.0.1:8000"
    monkeypatch.setenv("PROMPTSERVE_URL", "http://elsewhere:9000/")
    assert Client().url == AsyncClient().url == "http://elsewhere:9000"
    assert Client("http://given").url == "http://given"


def test_an_unreachable_service_is_a_connection_error(run: Callable[..., Any]) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    fake = FakeService().on("GET", "/v1/jobs", refuse)
    with pytest.raises(APIConnectionError, match="connection refused"):
        run(fake, lambda c: c.jobs())
    assert len(fake.requests) == FAST.attempts  # a refused connection is always safe to retry


def progress(epoch: int, loss: float) -> dict[str, Any]:
    return {"epoch": epoch, "epochs": 2, "step": epoch, "total_steps": 2, "loss": loss,
            "eta_s": 3.0 * (2 - epoch)}  # fmt: skip


def test_wait_polls_until_the_job_succeeds_and_draws_its_progress(
    run: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    result = {"classifier": "parts", "version": "2", "published": "alias", "alias": "latest",
              "gate": {"passed": True, "reason": "beats zero-shot and version 1",
                       "heldout": {"new": 100.0, "zeroshot": 50.0, "current": 75.0}}}  # fmt: skip
    fake = FakeService().on(
        "GET",
        "/v1/jobs/job-1",
        ok(job_body("queued")),
        ok(job_body("running", progress=progress(1, 0.75))),
        ok(job_body("succeeded", progress=progress(2, 0.25), result=result)),
    )
    job = run(fake, lambda c: c.wait("job-1", poll_interval=0.01, progress=True))
    assert job.succeeded
    assert job.result.version == "2"
    assert job.result.gate.passed
    assert job.result.gate.heldout["current"] == 75.0
    bar = capsys.readouterr().err
    assert "epoch 1/2" in bar
    assert "loss 0.7500" in bar
    assert "ETA 00:03" in bar
    assert "succeeded" in bar
    assert "version 2" in bar


def test_wait_raises_job_failed(run: Callable[..., Any]) -> None:
    failed = job_body("failed", error={"reason": "error", "message": "loss is nan"})
    fake = FakeService().on("GET", "/v1/jobs/job-1", ok(job_body("running")), ok(failed))
    with pytest.raises(JobFailed, match="loss is nan") as raised:
        run(fake, lambda c: c.wait("job-1", poll_interval=0.01))
    assert raised.value.job.state == "failed"
    fake = FakeService().on("GET", "/v1/jobs/job-1", ok(job_body("cancelled")))
    with pytest.raises(JobFailed, match="cancelled"):
        run(fake, lambda c: c.wait("job-1", poll_interval=0.01))


def test_wait_gives_up_after_its_timeout(run: Callable[..., Any]) -> None:
    fake = FakeService().on("GET", "/v1/jobs/job-1", ok(job_body("running")))
    with pytest.raises(JobTimeout) as raised:
        run(fake, lambda c: c.wait("job-1", timeout=0.05, poll_interval=0.01))
    assert raised.value.job.state == "running"


def test_the_upload_progress_bar_streams_the_same_body(
    run: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeService().on("POST", "/v1/adapt", ok(job_body(), 202))
    examples = [(PNG * 4000, "a"), (PNG * 4000, "b")]
    run(fake, lambda c: c.adapt("parts", examples=examples), progress=True)
    (request,) = fake.requests
    assert int(request.headers["Content-Length"]) == len(request.content) > 100_000
    assert "Transfer-Encoding" not in request.headers
    assert b'name="labels"\r\n\r\nb\r\n' in request.content
    assert "uploading 2 images" in capsys.readouterr().err


def test_aliases_versions_and_jobs_routes(run: Callable[..., Any]) -> None:
    detail = {"name": "parts", "default": False, "latest": "2", "aliases": {"latest": "2",
              "prod": "1"}, "versions": [{"version": "1", "aliases": ["prod"]},
              {"version": "2", "aliases": ["latest"], "candidate": False}]}  # fmt: skip
    fake = (
        FakeService()
        .on("GET", "/v1/classifiers/parts", ok(detail))
        .on("GET", "/v1/classifiers/parts/aliases", ok({"latest": "2", "prod": "1"}))
        .on("PUT", "/v1/classifiers/parts/aliases/prod", ok({"alias": "prod", "version": "2"}))
        .on("DELETE", "/v1/classifiers/parts/aliases/prod", httpx.Response(204))
        .on("DELETE", "/v1/classifiers/parts/versions/1", httpx.Response(204))
        .on("POST", "/v1/jobs/job-1/cancel", ok(job_body("cancelled")))
        .on(
            "GET",
            "/v1/jobs/job-1/events",
            ok(
                {
                    "data": [
                        {"seq": 1, "at": "t", "level": "info", "message": "created", "data": None}
                    ],
                    "has_more": False,
                }
            ),
        )  # fmt: skip
        .on("GET", "/v1/jobs", ok({"data": [job_body()], "has_more": False, "next_after": None}))
    )
    assert run(fake, lambda c: c.aliases("parts")) == {"latest": "2", "prod": "1"}
    assert run(fake, lambda c: c.classifier("parts")).version("prod").version == "1"
    assert run(fake, lambda c: c.set_alias("parts", "prod", 2)).version == "2"
    assert run(fake, lambda c: c.delete_alias("parts", "prod")) is None
    assert run(fake, lambda c: c.delete("parts", 1)) is None
    assert run(fake, lambda c: c.cancel("job-1")).state == "cancelled"
    assert run(fake, lambda c: c.events("job-1")).data[0].message == "created"
    assert run(fake, lambda c: c.jobs()).data[0].id == "job-1"
