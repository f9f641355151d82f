"""Connection limits uvicorn lacks: a cap on a request's head, a deadline for it, and a cap on
open connections. One HTTP protocol, uvicorn's httptools one with these checks added, serves
`promptserve serve` in one process and in every API worker (`server_options`).

- Head size: the bytes read while a request line and its headers are incomplete are counted,
  and so are the headers; past `max_header_bytes` or `max_headers` the client gets a 431
  ``headers_too_large`` and the connection is closed. httptools itself has no cap (and copies
  a growing header value on every read), so the count is taken before each read is parsed.
  A pipelined request's head may be charged the previous body's bytes of the same read.
- Head deadline: from a connection's start (or a request's first byte) to the end of its
  headers at most `header_timeout_s`, else the connection is closed. uvicorn arms its own
  keep-alive timer only after a response, so a connection that never finishes a request would
  stay open for ever.
- Open connections: at `max_connections`, a new connection closes the longest-idle one (no
  request running); if none is idle, the new one is answered 503 ``too_many_connections``. So
  idle sockets cannot use up the process's file descriptors, and health keeps answering.

Why not h11 with ``h11_max_incomplete_event_size``: it caps the head too, but h11 parses in
Python and costs more per request (docs/guides/limits.md has the figures), and it has no head
deadline or connection cap either.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import resource
import time
from dataclasses import dataclass
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from promptserve.service.settings import Settings

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0  # a refused connection is logged at most this often
RESERVED_FDS = 256  # file descriptors kept for the store, the databases, the engine and logs
# a request body buffered past this (while the app has not taken it) pauses the connection's
# reads; uvicorn's 64 KiB is below one socket read of uvloop's (256 KiB), so each read of a
# large body paused and resumed the socket: a third of the event loop's CPU for a 2 MB photo
BODY_HIGH_WATER = 512 * 1024


@dataclass(frozen=True)
class ConnectionLimits:
    """The connection settings (MAX_HEADER_BYTES, MAX_HEADERS, HEADER_TIMEOUT_S,
    MAX_CONNECTIONS)."""

    max_header_bytes: int
    max_headers: int
    header_timeout_s: float
    max_connections: int


class HeadRefusedError(Exception):
    """Raised in a parser callback to stop parsing a head that passed a limit."""


def raw_error(status: int, reason: str, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 response with the service's JSON error body, closing the connection
    (no request id: the request was never read)."""
    body = orjson.dumps({"error": {"code": code, "message": message, "request_id": None}})
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def too_large(why: str, limits: ConnectionLimits) -> bytes:
    """The 431 of a head that passed a limit."""
    message = f"{why}; the limits are {limits.max_header_bytes} bytes, {limits.max_headers} headers"
    return raw_error(431, "Request Header Fields Too Large", "headers_too_large", message)


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the head cap, the head deadline and the connection
    cap of `limits` (see the module docstring)."""

    # this process's idle connections, longest idle first (a dict keeps insertion order): the
    # one to close for a new connection is found at once, not by a scan of thousands
    idle_ones: dict[GuardedProtocol, None] = {}
    refusals_logged_at = 0.0

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.in_head = True  # a request head is being read (or awaited)
        self.head_bytes = 0
        self.header_count = 0
        self.refusal: bytes | None = None
        self.head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections and not self._evict_idle():
            if time.monotonic() - GuardedProtocol.refusals_logged_at > LOG_EVERY_S:
                GuardedProtocol.refusals_logged_at = time.monotonic()
                log.warning(
                    "%d connections open, none idle: refusing new ones", len(self.connections)
                )
            transport.write(
                raw_error(
                    503,
                    "Service Unavailable",
                    "too_many_connections",
                    f"{self.limits.max_connections} connections are open; retry later",
                )
            )
            transport.close()
            return
        super().connection_made(transport)
        self.idle_ones[self] = None
        self._arm_head_timer()

    def _evict_idle(self) -> bool:
        while self.idle_ones:
            oldest = next(iter(self.idle_ones))
            del self.idle_ones[oldest]
            if oldest.idle and oldest in self.connections:
                oldest.transport.close()
                self.connections.discard(oldest)  # its connection_lost comes later
                return True
        return False

    @property
    def idle(self) -> bool:
        """No request of this connection is running (its next head may be on its way)."""
        return self.cycle is None or self.cycle.response_complete

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self.idle_ones.pop(self, None)
        if self.transport is not None:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self.in_head and self.head_bytes > self.limits.max_header_bytes:
            self._refuse_head(f"the request head passed {self.limits.max_header_bytes} bytes")
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if self.refusal is None:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
                return
        if self.refusal is not None:
            self.transport.write(self.refusal)
            self.transport.close()
            return
        if self.in_head:
            self.head_bytes += len(data)
            if self.head_bytes > self.limits.max_header_bytes:
                self._refuse_head(f"the request head passed {self.limits.max_header_bytes} bytes")

    def on_body(self, body: bytes) -> None:
        """uvicorn's `on_body` with the `BODY_HIGH_WATER` mark instead of its 64 KiB."""
        cycle = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        cycle.body += body
        if len(cycle.body) > BODY_HIGH_WATER:
            self.flow.pause_reading()
        cycle.message_event.set()

    def _refuse_head(self, why: str) -> None:
        log.debug("refused a request head: %s", why)
        self.transport.write(too_large(why, self.limits))
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head, self.head_bytes, self.header_count = True, 0, 0
        self._arm_head_timer()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        if self.header_count > self.limits.max_headers:
            why = f"the request has over {self.limits.max_headers} headers"
            self.refusal = too_large(why, self.limits)
            raise HeadRefusedError(why)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.in_head = False
        self._cancel_head_timer()
        self.idle_ones.pop(self, None)
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        self.idle_ones.pop(self, None)
        self.idle_ones[self] = None  # now the most recently idle
        super().on_response_complete()

    def _arm_head_timer(self) -> None:
        if self.head_timer is None:
            self.head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_late)

    def _cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_late(self) -> None:
        self.head_timer = None
        if self.in_head and not self.transport.is_closing():
            self.transport.close()


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for `settings`: the same in one process and in each API worker."""
    limits = ConnectionLimits(
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        header_timeout_s=settings.header_timeout_s,
        max_connections=connection_cap(settings.max_connections),
    )
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": None,  # our handler and format (service.logs), not uvicorn's own
        "access_log": False,  # the access log is ours (PROMPTSERVE_ACCESS_LOG)
        # uvicorn takes a protocol class; a partial of one is called the same way, and pickles
        # (by reference) for the spawned API workers
        "http": functools.partial(GuardedProtocol, limits=limits),
        # a client trickling its body must not hold a SIGTERM off until the orchestrator kills
        "timeout_graceful_shutdown": math.ceil(settings.shutdown_timeout_s),
    }


def connection_cap(wanted: int) -> int:
    """`wanted`, or fewer when the process may not open that many files (and a few more)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or wanted + RESERVED_FDS <= soft:
        return wanted
    cap = max(1, soft - RESERVED_FDS)
    log.warning("MAX_CONNECTIONS %d passes the open-file limit %d: %d", wanted, soft, cap)
    return cap
