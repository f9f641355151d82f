"""Request bodies against the clock, and the body bytes in flight counted as they arrive.

Admission (`service.api.middleware.AdmissionMiddleware`) hands each request with a body a
`PacedReceive`: the body must keep coming, at least ``min_rate * window_s`` bytes in every
window of ``window_s`` seconds (a window starts when the previous one's quota was met) and all
of it within ``total_s``; a body that stalls is answered 408 ``body_timeout`` and its
admission slot is released at once. Bytes count against the in-flight budget when they arrive,
not when declared, so connections that declare megabytes and send nothing hold nothing; and a
request blocked waiting for its client's bytes is not "in flight" for the request budget, so
silent uploads cannot take every slot. The clock is the event loop's timer (`asyncio.timeout`),
never a thread.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from promptserve.service.api.handlers import error_response, request_id_of
from promptserve.service.errors import BodyTimeoutError, OverloadedError
from promptserve.service.public_errors import public_error


@dataclass(frozen=True)
class BodyPace:
    """How fast a request body must arrive (the BODY_* settings)."""

    min_rate: int  # bytes/s over each window; 0: any rate
    window_s: float
    total_s: float


@dataclass
class InFlight:
    """What the admitted requests hold: their number, how many of them wait for their client's
    body bytes, and the body bytes received so far."""

    requests: int = 0
    waiting: int = 0
    bytes: int = 0

    @property
    def working(self) -> int:
        """Requests in flight that are not waiting on their client."""
        return self.requests - self.waiting


def has_body(scope: Scope) -> bool:
    """Whether the request declares a body: a Content-Length above 0, or chunked."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


class PacedReceive:
    """The ASGI `receive` of one admitted request with a body: cut off by `pace`, its bytes
    counted in `flight` (at most `max_bytes` of all requests together, when others run)."""

    def __init__(
        self, receive: Receive, pace: BodyPace, flight: InFlight, *, max_bytes: int, retry_s: int
    ) -> None:
        self.receive = receive
        self.pace = pace
        self.flight = flight
        self.max_bytes = max_bytes
        self.retry_s = retry_s
        self.counted = 0  # bytes of this body in flight.bytes
        self.done = False
        self.start = self.window_start = time.monotonic()
        self.window_bytes = 0

    async def __call__(self) -> Message:
        if self.done:  # the body is in: what follows is the wait for a disconnect
            return await self.receive()
        delay = self.start + self.pace.total_s - time.monotonic()
        if self.pace.min_rate:
            delay = min(delay, self.window_start + self.pace.window_s - time.monotonic())
        self.flight.waiting += 1
        try:
            async with asyncio.timeout(max(delay, 0.0) if delay < math.inf else None):
                message = await self.receive()
        except TimeoutError:
            raise BodyTimeoutError(self._slow_message(), headers={"Connection": "close"}) from None
        finally:
            self.flight.waiting -= 1
        if message["type"] != "http.request":  # the client left
            self.done = True
            return message
        self._count(len(message.get("body", b"")))
        self.done = not message.get("more_body", False)
        return message

    def _count(self, size: int) -> None:
        self.counted += size
        self.flight.bytes += size
        self.window_bytes += size
        if self.window_bytes >= self.pace.min_rate * self.pace.window_s:
            self.window_start, self.window_bytes = time.monotonic(), 0
        if self.flight.bytes > self.max_bytes and self.flight.requests > 1:
            raise OverloadedError(
                f"the body bytes in flight passed their budget of {self.max_bytes}; retry after "
                f"{self.retry_s} s",
                headers={"Retry-After": str(self.retry_s), "Connection": "close"},
            )

    def _slow_message(self) -> str:
        pace = self.pace
        if time.monotonic() - self.start >= pace.total_s:
            return f"the request body took over {pace.total_s:g} s; send it faster"
        return (
            f"the request body arrived slower than {pace.min_rate} bytes/s over "
            f"{pace.window_s:g} s ({self.counted} bytes in {time.monotonic() - self.start:.1f} s)"
        )


async def answer_refusals(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Run `app`; a refusal of `PacedReceive` raised where no route's handler caught it is
    answered here (unless the response had begun)."""
    started = False

    async def tracking_send(message: Message) -> None:
        nonlocal started
        started = started or message["type"] == "http.response.start"
        await send(message)

    try:
        await app(scope, receive, tracking_send)
    except (BodyTimeoutError, OverloadedError) as exc:
        if started:
            raise
        status, code, message, headers, _ = public_error(exc)
        response = error_response(status, code, message, headers, request_id=request_id_of(scope))
        await response(scope, receive, send)
