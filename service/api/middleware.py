"""Pure ASGI middleware: request ids, admission control and the request body limit (the
request metrics: `service.api.request_metrics`).

The request id comes first (outermost): every request gets one (the client's own
``X-Request-ID`` when it is 1-128 characters of ``[A-Za-z0-9._:-]``, else a new random one),
kept in the scope for the error bodies and answered in ``X-Request-ID`` on every response. The
same middleware marks the unversioned API paths deprecated (``Deprecation`` and ``Link:
</v1/...>; rel="successor-version"``). It costs one scan of the request headers and one header
appended to the response.

Admission acts first, on the headers alone: while the requests (or body bytes) in flight are at
their budget, a new request is answered 429 with ``Retry-After`` before a byte of its body is
read or decoded, so overload costs the server almost nothing and the requests it has accepted
keep their latency. Body bytes count as they arrive, and a body must keep arriving
(`service.api.uploads`), so slow clients hold nothing. Health checks and metrics are never
refused.

The body limit acts before anything parses the body (Starlette spools multipart uploads to disk
before a route runs): a declared Content-Length over the limit is answered 413 at once, and a
streamed body (chunked, or lying about its length) is cut off as soon as it passes the limit.
"""

from __future__ import annotations

import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from promptserve.service.api.access import log_access
from promptserve.service.api.handlers import REQUEST_ID_KEY, error_response, request_id_of
from promptserve.service.api.uploads import (
    BodyPace,
    InFlight,
    PacedReceive,
    answer_refusals,
    has_body,
)
from promptserve.service.errors import BodyTooLargeError
from promptserve.service.logs import LOG_CONTEXT, LogContext

VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
LEGACY_PREFIXES = ("/classify", "/adapt", "/jobs", "/classifiers")  # now under /v1


def successor_path(path: str) -> str | None:
    """The /v1 path that replaces an unversioned API path; None for any other path."""
    if not path.startswith(LEGACY_PREFIXES):
        return None
    parts = path.strip("/").split("/")
    if parts[0] not in ("classify", "adapt", "jobs", "classifiers"):
        return None  # /classifyx and the like
    if parts[0] == "classifiers" and len(parts) == 3:  # /classifiers/{name}/{version}
        parts.insert(2, "versions")
    return "/v1/" + "/".join(parts)


class RequestIdMiddleware:
    """Gives every request an id (see the module docstring), binds it to the request's log lines
    (`service.logs.LOG_CONTEXT`), marks deprecated paths and, with `access_log`, logs one line
    per answer."""

    def __init__(self, app: ASGIApp, *, access_log: bool = False) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                given = value
                break
        if given is not None and VALID_REQUEST_ID.fullmatch(given):
            request_id = given.decode("ascii")
        else:
            request_id = uuid.uuid4().hex
        scope[REQUEST_ID_KEY] = request_id
        extra = [(b"x-request-id", request_id.encode("ascii"))]
        successor = successor_path(scope["path"])
        if successor is not None:
            extra.append((b"deprecation", b"true"))
            extra.append((b"link", f'<{successor}>; rel="successor-version"'.encode()))

        status = 500  # what the client sees when the app raises before responding

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"]
                message = {**message, "headers": headers + extra}
            await send(message)

        context = LogContext(request_id)
        token = LOG_CONTEXT.set(context)
        start = time.perf_counter() if self.access_log else 0.0
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.access_log:
                log_access(scope, status, time.perf_counter() - start, context)
            LOG_CONTEXT.reset(token)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._refuse(scope, receive, send, f"{declared} bytes declared")
            return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLargeError(self._message(f"at least {received} bytes sent"))
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLargeError as exc:  # raised where no handler caught it (outside a route)
            if started:
                raise
            response = error_response(413, exc.code, exc.message, request_id=request_id_of(scope))
            await response(scope, receive, send)

    def _message(self, what: str) -> str:
        return f"request body too large ({what}); the limit is {self.max_body_bytes} bytes"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, what: str) -> None:
        response = error_response(
            413, BodyTooLargeError.code, self._message(what), request_id=request_id_of(scope)
        )
        response.headers["Connection"] = "close"  # the unread body must not be parsed as a request
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class AdmissionMiddleware:
    """Admits at most `max_requests` requests (those waiting for their client's body bytes
    aside) and `max_bytes` body bytes, counted as they arrive, at once; a body must arrive at
    `pace` (`service.api.uploads`)."""

    EXEMPT = ("/health/", "/metrics")

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_requests: int,
        max_bytes: int,
        body_limit: int,
        retry_after_s: int,
        pace: BodyPace | None = None,
    ) -> None:
        self.app = app
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.body_limit = body_limit  # what a request without Content-Length may still send
        self.retry_after_s = retry_after_s
        self.pace = pace or BodyPace(min_rate=0, window_s=1.0, total_s=float("inf"))
        self.flight = InFlight()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.EXEMPT):
            await self.app(scope, receive, send)
            return
        body = has_body(scope)
        declared = min(_content_length(scope) or 0, self.body_limit)
        flight = self.flight
        # one request is always admitted when nothing else runs, whatever its size
        if flight.working >= self.max_requests or (
            body and flight.requests and flight.bytes + declared > self.max_bytes
        ):
            await self._refuse(scope, receive, send)
            return
        flight.requests += 1
        paced = None
        if body:
            paced = PacedReceive(
                receive, self.pace, flight, max_bytes=self.max_bytes, retry_s=self.retry_after_s
            )
        try:
            await answer_refusals(self.app, scope, paced or receive, send)
        finally:
            flight.requests -= 1
            flight.bytes -= paced.counted if paced is not None else 0

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = (
            f"the server is at its limit of {self.max_requests} requests or {self.max_bytes} "
            f"body bytes in flight; retry after {self.retry_after_s} s"
        )
        response = error_response(
            429,
            "overloaded",
            message,
            headers={"Retry-After": str(self.retry_after_s)},
            request_id=request_id_of(scope),
        )
        await response(scope, receive, send)
