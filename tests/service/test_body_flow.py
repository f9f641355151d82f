"""Reading request bodies on the connection: `GuardedProtocol` buffers up to
`BODY_HIGH_WATER` bytes of a body the app has not taken yet before it pauses the socket (so a
large photo is read without a pause and resume per socket read, and an app that stops reading
holds at most that much per connection). Driven here through uvicorn's protocol calls with a
fake transport, so the pauses are counted exactly."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from promptserve.service.connections import BODY_HIGH_WATER, ConnectionLimits, GuardedProtocol
from tests.waiting import eventually

pytestmark = pytest.mark.anyio

CHUNK = 256 * 1024  # one socket read of uvloop's


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.pauses = 0
        self.resumes = 0
        self.written = b""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        self.pauses += 1

    def resume_reading(self) -> None:
        self.resumes += 1

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


async def test_a_body_pauses_reading_only_past_the_high_water_mark() -> None:
    gate = asyncio.Event()  # the app takes no body bytes until this is set
    received = bytearray()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await gate.wait()
        while True:
            message = await receive()
            received.extend(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})

    config = uvicorn.Config(app, lifespan="off", log_config=None)
    config.load()
    limits = ConnectionLimits(
        max_header_bytes=8192, max_headers=20, header_timeout_s=10, max_connections=10
    )
    protocol = GuardedProtocol(
        config=config,
        server_state=ServerState(),
        app_state={},
        _loop=asyncio.get_running_loop(),
        limits=limits,
    )
    transport = FakeTransport()
    protocol.connection_made(transport)
    assert BODY_HIGH_WATER >= CHUNK  # a read of a photo that the app takes at once never pauses
    body = bytes(range(256)) * (3 * BODY_HIGH_WATER // 256)
    protocol.data_received(
        f"POST /classify HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n\r\n".encode()
    )
    chunks = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]
    fed = 0
    for chunk in chunks:
        protocol.data_received(chunk)
        fed += len(chunk)
        # buffered, not taken: reading goes on up to the mark and pauses past it
        assert transport.pauses == (1 if fed > BODY_HIGH_WATER else 0), fed
        if transport.pauses:
            break
    assert fed <= BODY_HIGH_WATER + CHUNK  # what a connection holds for an app not reading
    gate.set()
    await eventually(lambda: transport.resumes >= 1)  # taking the body resumes reading
    for chunk in chunks[fed // CHUNK :]:
        protocol.data_received(chunk)
        await asyncio.sleep(0)
    await eventually(lambda: transport.written.endswith(b"ok"))
    assert bytes(received) == body
    assert transport.written.startswith(b"HTTP/1.1 200")
    protocol.connection_lost(None)
