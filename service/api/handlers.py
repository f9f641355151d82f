"""Every error as an HTTP response.

Every error response has the body ``{"error": {"code": ..., "message": ...}}``. The service's
own exceptions, the model and training packages' and anything unexpected are answered through
`service.errors.public_error` (the mapping the engine socket uses too); FastAPI's request
validation, Starlette's 404 / 405 and a client gone mid-body are the web framework's own.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from promptserve.models.errors import PromptserveError
from promptserve.service.errors import (
    ServiceError,
    log_failure,
    public_error,
    validation_message,
)

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


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    # the service's, the model and training packages' and unexpected errors: one mapping
    public = public_error(exc)
    log_failure(f"{request.method} {request.url.path}", exc, public)
    return error_response(*public)


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


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception family to its JSON error response."""
    app.add_exception_handler(ServiceError, _domain_error)
    app.add_exception_handler(PromptserveError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _domain_error)
