"""The one mapping of any error to its public answer, and the log line of a failure.

`public_error` turns any exception into the (status, code, message, headers) a client sees:
the HTTP handlers (`service.api.handlers`), the engine socket (`service.remote.protocol`) and
start-up (`/health/ready`'s message) all answer through it, so one error reads the same in one
process and across processes. The exceptions it maps, and the status and code of each model
package error (`HTTP_MEANING`), are defined in `service.errors`.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from promptserve.models import errors as model_errors
from promptserve.service import faults
from promptserve.service.errors import NotReadyError, ServiceError, fault_error, http_meaning

log = logging.getLogger(__name__)

ARTIFACT_MESSAGE = (
    "a stored classifier artifact failed its checks or could not be loaded; see the server log"
)


class PublicError(NamedTuple):
    """An error as a client sees it: the body's code and message, the status and headers."""

    status: int
    code: str
    message: str
    headers: dict[str, str] | None = None
    fields: list[dict[str, Any]] | None = None  # a 422's field paths


class ForwardedError(ServiceError):
    """An error raised in another process (the engine), raised again here as it was answered."""

    def __init__(self, public: PublicError) -> None:
        super().__init__(public.message, headers=public.headers, fields=public.fields)
        self.status, self.code = public.status, public.code


def public_error(exc: BaseException) -> PublicError:
    """The public answer to `exc`. Internals (paths, tracebacks) never reach it: a broken
    artifact and an unexpected error name only their kind; the detail goes to the log."""
    if isinstance(exc, ServiceError):
        return PublicError(exc.status, exc.code, exc.message, exc.headers, exc.fields)
    meaning = http_meaning(exc) if isinstance(exc, Exception) else None
    if meaning is not None:  # what the user asked for: a 4xx with the model package's message
        return PublicError(*meaning, str(exc))
    if isinstance(exc, model_errors.ArtifactError):
        return PublicError(500, "artifact_error", ARTIFACT_MESSAGE)
    fault = faults.classify(exc)
    if fault is not None:  # a full disk, a read-only store, a locked or unreachable database
        return public_error(fault_error(fault))
    return PublicError(500, "internal_error", f"{type(exc).__name__}; see the server log")


def log_failure(where: str, exc: BaseException, public: PublicError) -> None:
    """Log an error answered with a 5xx (not a 503 of starting up) with its detail: one line,
    unless it is unexpected (then with its traceback)."""
    if public.status < 500 or isinstance(exc, NotReadyError):
        return
    if faults.classify(exc) is not None:  # a storage fault: the cause in one line
        log.error("%s failed: %s (%s: %s)", where, public.message, type(exc).__name__, exc)
    elif isinstance(exc, ForwardedError):
        log.error("%s failed in the engine process: %s", where, exc.message)
    elif isinstance(exc, ServiceError | model_errors.PromptserveError):
        log.error("%s failed: %s", where, exc)
    else:
        log.error("%s failed", where, exc_info=exc)
