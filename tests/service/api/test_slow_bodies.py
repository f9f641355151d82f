"""Slow and silent uploads hold nothing: admission counts body bytes as they arrive, a request
blocked on its client's bytes takes no request slot, and a body that stalls is answered 408 and
frees its slot at once. In process, on the middleware; over real sockets in
tests/service/test_connections_e2e.py."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from promptserve.service.api.middleware import AdmissionMiddleware
from promptserve.service.api.uploads import BodyPace
from tests.service.helpers import ClientFactory, png_bytes, series
from tests.waiting import eventually

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024


async def read_all(scope: Any, receive: Any, send: Any) -> None:
    """An app that reads the whole body, then answers 200 with its size."""
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


def scope_of(headers: list[tuple[bytes, bytes]], path: str = "/classify") -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": path, "headers": headers}


class Trickle:
    """A client's body: `first` at once, then nothing until `release` is set."""

    def __init__(self, first: bytes = b"x") -> None:
        self.parts = [first]
        self.release = asyncio.Event()
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        if self.parts:
            return {"type": "http.request", "body": self.parts.pop(), "more_body": True}
        await self.release.wait()
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int | None:
        starts = [m["status"] for m in self.sent if m["type"] == "http.response.start"]
        return starts[0] if starts else None


def admission(pace: BodyPace, **limits: int) -> AdmissionMiddleware:
    values = {"max_requests": 2, "max_bytes": 64 * MiB, "body_limit": 20 * MiB} | limits
    return AdmissionMiddleware(read_all, retry_after_s=1, pace=pace, **values)


SLOW = BodyPace(min_rate=1000, window_s=0.3, total_s=60)


@pytest.mark.parametrize(
    "framing", [[(b"content-length", b"20971520")], [(b"transfer-encoding", b"chunked")]]
)
async def test_stalled_uploads_take_no_slot_and_no_budget(framing: list[Any]) -> None:
    """Four uploads declaring 20 MiB (or chunked) that send a byte and stall: with two request
    slots and 64 MiB, a plain request still gets in, and each stalled one is a 408 with the
    JSON error body once its window passes, its slot and bytes given back."""
    app = admission(BodyPace(min_rate=1000, window_s=30, total_s=60))
    stalled = [Trickle() for _ in range(4)]
    tasks = [asyncio.create_task(app(scope_of(framing), t.receive, t.send)) for t in stalled]
    await eventually(lambda: app.flight.waiting == 4)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        plain = await client.post("/classify", content=b"y" * 1000)
    assert plain.status_code == 200, plain.text
    assert app.flight.bytes == 4  # one byte each, not 80 MiB
    for trickle in stalled:
        trickle.release.set()
    await asyncio.gather(*tasks)
    assert [t.status for t in stalled] == [200] * 4


async def test_a_stalled_body_is_a_408_and_frees_its_slot() -> None:
    app = admission(SLOW, max_requests=1)
    trickle = Trickle(b"x" * 10)
    task = asyncio.create_task(
        app(scope_of([(b"content-length", b"1000000")]), trickle.receive, trickle.send)
    )
    await asyncio.wait_for(task, timeout=30)
    assert trickle.status == 408
    body = b"".join(m.get("body", b"") for m in trickle.sent if m["type"] == "http.response.body")
    assert b'"code":"body_timeout"' in body
    headers = dict(next(m for m in trickle.sent if m["type"] == "http.response.start")["headers"])
    assert headers[b"connection"] == b"close"
    assert (app.flight.requests, app.flight.bytes, app.flight.waiting) == (0, 0, 0)


async def test_a_body_that_keeps_its_pace_is_read_whole() -> None:
    """A slow but steady body (each window brings its quota) is never cut off."""
    app = admission(SLOW)
    parts = [b"z" * 400] * 10  # 400 bytes each 0.1 s: 4000 B/s against 1000 B/s

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0.1)
        part = parts.pop()
        return {"type": "http.request", "body": part, "more_body": bool(parts)}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope_of([(b"content-length", b"4000")]), receive, send)
    assert (sent[0]["status"], sent[1]["body"]) == (200, b"4000")


async def test_bytes_past_the_budget_are_refused_as_they_arrive() -> None:
    """The budget holds on what arrives: a second body that would pass it is a 429 mid-body."""
    app = admission(SLOW, max_requests=10, max_bytes=1000)
    first = Trickle(b"x" * 900)
    held = asyncio.create_task(
        app(scope_of([(b"transfer-encoding", b"chunked")]), first.receive, first.send)
    )
    await eventually(lambda: app.flight.bytes == 900)
    second = Trickle(b"y" * 200)
    await app(scope_of([(b"transfer-encoding", b"chunked")]), second.receive, second.send)
    first.release.set()
    await held
    assert (first.status, second.status) == (200, 429)


async def test_the_app_answers_a_stalled_upload_408(client_factory: ClientFactory) -> None:
    """As `create_app` wires it, with the BODY_* settings: a JSON upload that stops mid-body is
    a 408 body_timeout from the route, counted as a rejected request, and the next classify is
    served."""
    async with client_factory(body_min_rate=1000, body_rate_window_s=0.3) as (client, _):

        async def stalling() -> Any:
            yield b'{"images": ["'
            await asyncio.sleep(60)

        response = await client.post(
            "/classify",
            content=stalling(),
            headers={"Content-Type": "application/json", "Content-Length": "100000"},
        )
        after = await client.post(
            "/classify", content=png_bytes(), headers={"Content-Type": "image/png"}
        )
        text = (await client.get("/metrics")).text
    assert series(text, "promptserve_rejected_requests_total") == {(("reason", "body_timeout"),): 1}
    assert response.status_code == 408, response.text
    assert response.json()["error"]["code"] == "body_timeout"
    assert after.status_code == 200
