"""Pure ASGI middleware that counts and times every HTTP request (`service.metrics`).

A request is counted by its route template, not its path, so that a classifier's name or a
job id makes no new series; one answered before routing (the body limit's 413, for one) is
matched against the routes here. A request refused for a limit is also counted by the code of
its error body, and a method outside the standard ones is counted as "other".
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from promptserve.service.metrics import Metrics

REJECT_STATUSES = (408, 413, 429)  # a limit refused the request: counted by the error code


class MetricsMiddleware:
    """Counts every HTTP request by route template, method and status, and times it; a
    request refused for a limit (408, 413, 429) is also counted by the code of its error body."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics, routes: Callable[[], list[BaseRoute]]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client sees when the app raises before responding
        body_seen = False

        async def tracking_send(message: Message) -> None:
            nonlocal status, body_seen
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not body_seen:
                body_seen = True
                if status in REJECT_STATUSES:
                    self.metrics.observe_reject(_error_code(message.get("body", b"")))
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            route = self._route(scope)
            seconds = time.perf_counter() - start
            self.metrics.observe_request(route, _method(scope), status, seconds)

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")  # set by the router when it matched
        if route is not None and hasattr(route, "path"):
            return str(route.path)
        for candidate in self.routes():  # answered before routing (e.g. the body limit)
            match, _ = candidate.matches(scope)
            if match is Match.FULL and hasattr(candidate, "path"):
                return str(candidate.path)
        return "unmatched"


def _error_code(body: bytes) -> str:
    """The code of an error body (a refusal's body is small and sent in one message)."""
    try:
        return str(orjson.loads(body)["error"]["code"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "other"


KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _method(scope: Scope) -> str:
    """The request method as a metric label: anything a client invents is "other", so that
    clients cannot create new series."""
    method = str(scope["method"])
    return method if method in KNOWN_METHODS else "other"
