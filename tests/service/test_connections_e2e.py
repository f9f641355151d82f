"""Connection-level attacks on a real `promptserve serve`, over raw sockets: slow and silent
uploads, huge or countless headers, connections that never finish a request, too many idle
connections, and a SIGTERM while a client trickles its body (one process and ``--workers 2``).
The limits are set small here so each attack is over in about a second."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.service.helpers import png_bytes
from tests.service.servers import Server, copy_store, start_server, stop_server
from tests.waiting import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.slow]  # a real server process

LIMITS = {
    "PROMPTSERVE_MAX_BODY_BYTES": str(20 * 1024 * 1024),
    "PROMPTSERVE_MAX_INFLIGHT_REQUESTS": "4",
    "PROMPTSERVE_MAX_INFLIGHT_BYTES": str(40 * 1024 * 1024),
    "PROMPTSERVE_BODY_MIN_RATE": "4",  # bytes in every window of 1 s
    "PROMPTSERVE_BODY_RATE_WINDOW_S": "1",
    "PROMPTSERVE_MAX_HEADER_BYTES": "8192",
    "PROMPTSERVE_MAX_HEADERS": "20",
    "PROMPTSERVE_HEADER_TIMEOUT_S": "1",
    "PROMPTSERVE_MAX_CONNECTIONS": "40",
}
BOUNDARY = "b0undary"
PART = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
    "Content-Type: image/png\r\n\r\n"
).encode()


@pytest.fixture(scope="module")
def server(template_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("connections")
    running = start_server(
        copy_store(template_store, root / "store"), root / "server.log", timeout=180, **LIMITS
    )
    yield running
    stop_server(running)


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def classify(server: Server) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        return await client.post(
            "/classify", content=png_bytes(), headers={"Content-Type": "image/png"}
        )


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The status and JSON error of the response the server sends, read until it closes."""
    data = await asyncio.wait_for(reader.read(1 << 20), timeout=30)
    while not data.endswith(b"}"):
        more = await asyncio.wait_for(reader.read(1 << 20), timeout=30)
        if not more:
            break
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), data
    return int(head.split()[1]), orjson.loads(body)["error"]


class Upload:
    """A connection that sends `head`, then `piece` every 0.1 s until stopped."""

    def __init__(self, head: bytes, piece: bytes) -> None:
        self.head, self.piece = head, piece
        self.stop = asyncio.Event()

    async def start(self, server: Server) -> None:
        """Connect and send until the request is admitted (not answered at once): one that
        arrives while the previous ones have not yet begun to wait for their bodies may get a
        429, and tries again."""
        for _ in range(20):
            # kept: a writer that is collected closes its connection
            self.reader, self.writer = await asyncio.open_connection(*address(server))
            self.writer.write(self.head)
            self.sending = asyncio.create_task(self._send(self.writer))
            try:
                await asyncio.wait_for(self.reader.read(1), timeout=0.3)
            except TimeoutError:
                return
            self.sending.cancel()
            self.writer.close()
        raise AssertionError("every try was answered at once")

    async def _send(self, writer: asyncio.StreamWriter) -> None:
        while not self.stop.is_set():
            writer.write(self.piece)
            await asyncio.sleep(0.1)

    async def answer(self) -> tuple[int, dict[str, str]]:
        self.stop.set()
        await self.sending
        return await answer(self.reader)


async def test_slow_and_silent_uploads_lock_nobody_out(server: Server) -> None:
    """Four uploads declaring 20 MiB and two chunked ones, each sending a byte now and then
    (fast enough for the minimum rate): with four request slots and 40 MiB, a plain classify
    still gets in. Once they stop sending, each is answered 408 ``body_timeout``."""
    multipart = (
        f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Length: {20 * 1024 * 1024}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n".encode()
        + PART
    )
    chunked = (
        b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\n\r\n3\r\n[1,\r\n"
    )
    uploads = [Upload(multipart, b"x") for _ in range(4)]
    uploads += [Upload(chunked, b"1\r\n1\r\n") for _ in range(2)]
    for upload in uploads:
        await upload.start(server)
    plain = [await classify(server) for _ in range(3)]
    answers = [await upload.answer() for upload in uploads]
    after = await classify(server)
    assert [r.status_code for r in plain] == [200] * 3, [r.text for r in plain]
    assert [(status, error["code"]) for status, error in answers] == [(408, "body_timeout")] * 6
    assert after.status_code == 200


async def test_a_huge_header_is_a_431_and_costs_no_memory(server: Server) -> None:
    """A head past MAX_HEADER_BYTES is answered 431 (the JSON error body) and the connection
    closed; a client that goes on sending is cut off, not buffered; more headers than
    MAX_HEADERS are a 431 too."""
    reader, writer = await asyncio.open_connection(*address(server))
    writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 16384)
    status, error = await answer(reader)
    assert (status, error["code"]) == (431, "headers_too_large")

    reader, writer = await asyncio.open_connection(*address(server))
    writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
    sent, total = 0, 256 * 1024 * 1024  # 32,768 times the limit
    try:
        while sent < total:
            writer.write(b"a" * 65536)
            await asyncio.wait_for(writer.drain(), timeout=30)
            sent += 65536
    except ConnectionError:
        pass  # the server closed the connection
    assert sent < total // 16
    writer.close()

    reader, writer = await asyncio.open_connection(*address(server))
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(30))
    writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    status, error = await answer(reader)
    assert (status, error["code"]) == (431, "headers_too_large")


async def test_connections_that_never_finish_a_request_are_closed(server: Server) -> None:
    """Connections that send nothing, or a header line now and then, are closed once
    HEADER_TIMEOUT_S passes; more than MAX_CONNECTIONS idle ones push the oldest out, so
    health answers throughout and the server's file descriptors come back."""
    pid = server.process.pid
    before = open_fds(pid)
    idle = [await asyncio.open_connection(*address(server)) for _ in range(60)]  # cap: 40
    slow_reader, slow_writer = await asyncio.open_connection(*address(server))
    slow_writer.write(b"GET /health/live HTTP/1.1\r\n")

    async def trickle_headers() -> None:
        for i in range(600):  # a header line every 0.1 s for a minute
            slow_writer.write(b"X-%d: 1\r\n" % i)
            await asyncio.sleep(0.1)

    trickling = asyncio.create_task(trickle_headers())
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        health = [(await client.get("/health/live")).status_code for _ in range(3)]
    assert health == [200] * 3
    assert open_fds(pid) <= before + 45  # the cap, not the 61 connections

    closed = await asyncio.gather(*(reader.read() for reader, _ in idle))  # EOF: closed
    assert closed == [b""] * 60
    assert await asyncio.wait_for(slow_reader.read(), timeout=30) == b""
    assert not trickling.done()  # closed for its deadline, not because it stopped
    trickling.cancel()
    for _, writer in [*idle, (slow_reader, slow_writer)]:
        writer.close()
    await eventually(lambda: open_fds(pid) <= before + 2, what="file descriptors back")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_completes_while_a_client_trickles_its_body(
    template_store: Path, tmp_path: Path, workers: str
) -> None:
    """SIGTERM stops the server within SHUTDOWN_TIMEOUT_S although a client still sends its
    body a byte at a time (fast enough for the minimum rate), in one process and with workers."""
    running = start_server(
        copy_store(template_store, tmp_path / "store"),
        tmp_path / "server.log",
        timeout=300,
        **LIMITS
        | {
            "PROMPTSERVE_BODY_MIN_RATE": "0",
            "PROMPTSERVE_SHUTDOWN_TIMEOUT_S": "1",
            "PROMPTSERVE_WORKERS": workers,
        },
    )
    host, port = address(running)
    script = (
        "import socket, time\n"
        f"s = socket.create_connection(({host!r}, {port}))\n"
        "s.sendall(b'POST /classify HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 100000\\r\\n"
        "Content-Type: image/png\\r\\n\\r\\n')\n"
        "for i in range(1200):\n"
        "    s.sendall(b'x'); time.sleep(0.1)\n"
        "    if i == 10: print('sending', flush=True)\n"
    )
    client = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == b"sending\n"
        running.process.send_signal(signal.SIGTERM)
        # before: only once the client left, 2 minutes on
        running.process.wait(timeout=60)
    finally:
        client.kill()
        client.wait()
        if running.process.poll() is None:
            stop_server(running)
