"""The one place that maps every error to HTTP.

Every error response has the body ``{"error": {"code": ..., "message": ...}}``: the service's own
exceptions (`service.errors`), the model and training packages' exceptions, FastAPI's request
validation, Starlette's 404 / 405, and anything unexpected (500, logged with its traceback).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from promptserve.models.errors import ArtifactError, PromptserveError
from promptserve.service.errors import NotReadyError, ServiceError, http_meaning, validation_message

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


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    if exc.status >= 500 and not isinstance(exc, NotReadyError):  # starting up is no failure
        log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _package_error(request: Request, exc: Exception) -> JSONResponse:
    # errors of models/ and training/ that reach a route: what the user asked for is a 4xx, a
    # broken artifact in the store is the server's fault
    meaning = http_meaning(exc)
    if meaning is not None:
        return error_response(*meaning, str(exc))
    if isinstance(exc, ArtifactError):  # the detail names server paths: log it, do not send it
        log.error("artifact error on %s: %s", request.url.path, exc)
        message = "a stored classifier artifact failed its checks or could not be loaded"
        return error_response(500, "artifact_error", f"{message}; see the server log")
    log.error("unexpected promptserve error on %s: %s", request.url.path, exc)
    return error_response(500, "internal_error", f"{type(exc).__name__}; see the server log")


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "invalid_request", validation_message(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


async def _client_gone(request: Request, exc: Exception) -> JSONResponse:
    # the client hung up while its body was being read: nothing failed here, and nobody is
    # left to read the answer (a load generator stopping, a browser tab closed)
    log.info("client left during %s %s before its body was read", request.method, request.url.path)
    return error_response(400, "client_disconnected", "the client disconnected mid-request")


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception family to its JSON error response."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(PromptserveError, _package_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected_error)
