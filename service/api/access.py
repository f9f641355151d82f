"""The access log (``PROMPTSERVE_ACCESS_LOG=true``): one INFO line per HTTP answer, written by
`RequestIdMiddleware` on logger ``promptserve.access``, instead of uvicorn's own (which is off:
it knows neither the request id nor the classifier).

A line holds the method, the path (without the query string, which may carry data), the
status, the latency in milliseconds and, as every line of the request does, its id and the
classifier and version the handler answered with. In the JSON format each is its own field.
"""

from __future__ import annotations

import logging

from starlette.types import Scope

from promptserve.service.logs import LogContext

log = logging.getLogger("promptserve.access")


def log_access(scope: Scope, status: int, seconds: float, context: LogContext) -> None:
    latency_ms = round(seconds * 1000, 2)
    method, path = scope["method"], scope["path"]
    served = f" {context.classifier}@{context.version}" if context.classifier else ""
    log.info(
        "%s %s %d %.2f ms%s",
        method,
        path,
        status,
        latency_ms,
        served,
        extra={"method": method, "path": path, "status": status, "latency_ms": latency_ms},
    )
