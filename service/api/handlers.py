"""Every error as an HTTP response.

Every error response has the body ``{"error": {"code": ..., "message": ..., "request_id": ...}}``
(a 422 adds ``fields``: the path of each problem) and the ``X-Request-ID`` header
(`service.api.middleware.RequestIdMiddleware` chooses the id). The service's
own exceptions, the model and training packages' and anything unexpected are answered through
`service.public_errors.public_error` (the mapping the engine socket uses too); FastAPI's request
validation, Starlette's 404 / 405 and a client gone mid-body are the web framework's own. A 404
for a path that is a route with (or without) a final ``/`` is a redirect instead, with a relative
``Location`` (Starlette's own redirect, turned off in `create_app`, copies the client's Host
header into an absolute URL).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.datastructures import URL
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match
from starlette.types import Scope

from promptserve.models.errors import PromptserveError
from promptserve.service.api.auth import unknown_caller
from promptserve.service.errors import ServiceError, validation_fields, validation_message
from promptserve.service.faults import fault_types
from promptserve.service.logs import bound, current_request_id
from promptserve.service.public_errors import log_failure, public_error

log = logging.getLogger(__name__)

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}


REQUEST_ID_KEY = "promptserve.request_id"  # where the middleware keeps the id in the scope


def request_id_of(scope: Scope) -> str | None:
    """The id `RequestIdMiddleware` gave this request (None outside it)."""
    value = scope.get(REQUEST_ID_KEY)
    return value if isinstance(value, str) else None


def error_response(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    fields: list[dict[str, Any]] | None = None,
    *,
    request_id: str | None = None,
) -> JSONResponse:
    """The one error body: code, message, the request's id, and a 422's `fields`."""
    error: dict[str, Any] = {"code": code, "message": message, "request_id": request_id}
    if status == 422:
        error["fields"] = fields or []
    if request_id is not None:  # also set here: a 500 is sent outside the middleware
        headers = {**(headers or {}), "X-Request-ID": request_id}
    return JSONResponse({"error": error}, status_code=status, headers=headers)


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    # the service's, the model and training packages' and unexpected errors: one mapping
    public = public_error(exc)
    request_id = request_id_of(request.scope)
    # an unexpected error is answered outside the middleware, whose log context has ended
    with bound(None if current_request_id() else request_id):
        log_failure(f"{request.method} {request.url.path}", exc, public)
    return error_response(*public, request_id=request_id)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    return error_response(
        422,
        "invalid_request",
        validation_message(errors),
        fields=validation_fields(errors),
        request_id=request_id_of(request.scope),
    )


def slash_redirect(request: Request) -> RedirectResponse | None:
    """A 307 to the path's twin with or without the final ``/`` when only the twin is a route;
    the ``Location`` is relative (path and query), so the Host header never reaches it."""
    path = request.url.path
    if path == "/":
        return None
    twin = path.rstrip("/") if path.endswith("/") else path + "/"
    if not twin.startswith("/") or twin.startswith("//"):  # //host would leave this server
        return None
    scope = {**request.scope, "path": twin}
    router = request.app.router
    if not any(route.matches(scope)[0] != Match.NONE for route in router.routes):
        return None
    location = URL(path=twin, query=request.url.query)
    return RedirectResponse(str(location), status_code=307)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    # the router's own 404 (no route matched: no endpoint in the scope) and 405, not a 404
    # that a public route raises itself
    routed = exc.status_code == 405 or "endpoint" not in request.scope
    if exc.status_code in (404, 405) and routed and unknown_caller(request):
        return error_response(
            401,
            "unauthorized",
            "missing or unknown API key: send 'Authorization: Bearer <key>'",
            {"WWW-Authenticate": "Bearer"},
            request_id=request_id_of(request.scope),
        )
    if exc.status_code == 404:
        redirect = slash_redirect(request)
        if redirect is not None:
            return redirect
    code = HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return error_response(
        exc.status_code,
        code,
        str(exc.detail),
        dict(exc.headers or {}),
        request_id=request_id_of(request.scope),
    )


async def _client_gone(request: Request, exc: Exception) -> JSONResponse:
    # the client hung up while its body was being read: nothing failed here, and nobody is
    # left to read the answer (a load generator stopping, a browser tab closed)
    log.info("client left during %s %s before its body was read", request.method, request.url.path)
    return error_response(
        400,
        "client_disconnected",
        "the client disconnected mid-request",
        request_id=request_id_of(request.scope),
    )


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception family to its JSON error response."""
    app.add_exception_handler(ServiceError, _domain_error)
    app.add_exception_handler(PromptserveError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    # storage faults (service.faults) have handlers of their own, apart from Exception's: the
    # web framework re-raises what reaches the Exception handler, and the server then logs a
    # second traceback for one failed request
    for family in fault_types():
        app.add_exception_handler(family, _domain_error)
    app.add_exception_handler(Exception, _domain_error)
