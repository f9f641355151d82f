"""Domain exceptions of the service, and the one mapping of any error to its public answer.

Each service error carries its HTTP status and error code, but this module imports no web
framework. Errors that belong to the model package (bad names, unknown classifiers, versions
and labels) are raised as `models.errors` types; `HTTP_MEANING` below gives each its status
and code. `public_error` turns any exception into the (status, code, message, headers) a client
sees: the HTTP handlers (`service.api.handlers`), the engine socket (`service.remote.protocol`)
and start-up (`/health/ready`'s message) all answer through it, so one error reads the same in
one process and across processes.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from promptserve.models import errors as model_errors

log = logging.getLogger(__name__)

ARTIFACT_MESSAGE = (
    "a stored classifier artifact failed its checks or could not be loaded; see the server log"
)


class ServiceError(Exception):
    """Base of the errors the service raises on purpose; each knows its HTTP status."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers


class InvalidBodyError(ServiceError):
    """A body that cannot be parsed at all (malformed JSON)."""

    status, code = 400, "invalid_body"


class BadRequestError(ServiceError):
    """A request the service refuses as such (a dataset path outside the data root)."""

    status, code = 400, "bad_request"


class InvalidImageError(ServiceError):
    """Bytes that are not an image, a truncated image, or bad base64."""

    status, code = 400, "invalid_image"


class UnauthorizedError(ServiceError):
    status, code = 401, "unauthorized"


class UnknownJobError(ServiceError):
    status, code = 404, "unknown_job"


class JobFinishedError(ServiceError):
    """Cancelling a job that has already ended."""

    status, code = 409, "job_finished"


class DeleteRefusedError(ServiceError):
    """Deleting this version would leave the service without its default classifier."""

    status, code = 409, "conflict"


class ImageTooLargeError(ServiceError):
    """An image that declares more pixels than allowed (a decompression bomb)."""

    status, code = 413, "image_too_large"


class BodyTooLargeError(ServiceError):
    status, code = 413, "body_too_large"


class TooManyImagesError(ServiceError):
    status, code = 413, "too_many_images"


class UnsupportedMediaTypeError(ServiceError):
    status, code = 415, "unsupported_media_type"


class InvalidRequestError(ServiceError):
    """A request that parses but asks for something impossible (no images, bad names, ...)."""

    status, code = 422, "invalid_request"


class IdempotencyConflictError(ServiceError):
    """An Idempotency-Key reused with a different request."""

    status, code = 422, "idempotency_conflict"


class ProtectedClassifierError(ServiceError):
    """A tuning job that would publish a version of the default classifier, not allowed."""

    status, code = 403, "protected_classifier"


class TooManyJobsError(ServiceError):
    """As many jobs are queued as the service takes: the client should retry later."""

    status, code = 429, "too_many_jobs"


class QueueFullError(ServiceError):
    """The batcher's queue is full: the client should retry later."""

    status, code = 429, "queue_full"


class NotReadyError(ServiceError):
    status, code = 503, "not_ready"


class EngineError(ServiceError):
    status, code = 500, "engine_error"


def validation_message(errors: object) -> str:
    """One readable line from pydantic's error list: ``top_k: must be >= 1; ...``."""
    if not isinstance(errors, list | tuple):
        return str(errors)
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


# status and code of the model and training packages' errors that reach a request; the most
# specific class in an exception's MRO wins (see `http_meaning`)
HTTP_MEANING: dict[type[Exception], tuple[int, str]] = {
    model_errors.InvalidNameError: (422, "invalid_request"),
    model_errors.UnknownClassifierError: (404, "unknown_classifier"),
    model_errors.UnknownVersionError: (404, "unknown_version"),
    model_errors.InvalidLabelError: (422, "invalid_label"),
    model_errors.UnknownLabelError: (422, "unknown_label"),
    model_errors.ConfigError: (422, "invalid_request"),
    model_errors.UnknownMethodError: (422, "invalid_request"),
}


def http_meaning(exc: Exception) -> tuple[int, str] | None:
    """(status, code) of a model-package error that is the user's to fix; None otherwise."""
    for cls in type(exc).__mro__:
        if cls in HTTP_MEANING:
            return HTTP_MEANING[cls]
    return None


class PublicError(NamedTuple):
    """An error as a client sees it: the body's code and message, the status and headers."""

    status: int
    code: str
    message: str
    headers: dict[str, str] | None = None


class ForwardedError(ServiceError):
    """An error raised in another process (the engine), raised again here as it was answered."""

    def __init__(self, public: PublicError) -> None:
        super().__init__(public.message, headers=public.headers)
        self.status, self.code = public.status, public.code


def public_error(exc: BaseException) -> PublicError:
    """The public answer to `exc`. Internals (paths, tracebacks) never reach it: a broken
    artifact and an unexpected error name only their kind; the detail goes to the log."""
    if isinstance(exc, ServiceError):
        return PublicError(exc.status, exc.code, exc.message, exc.headers)
    meaning = http_meaning(exc) if isinstance(exc, Exception) else None
    if meaning is not None:  # what the user asked for: a 4xx with the model package's message
        return PublicError(*meaning, str(exc))
    if isinstance(exc, model_errors.ArtifactError):
        return PublicError(500, "artifact_error", ARTIFACT_MESSAGE)
    return PublicError(500, "internal_error", f"{type(exc).__name__}; see the server log")


def log_failure(where: str, exc: BaseException, public: PublicError) -> None:
    """Log an error answered with a 5xx (not a 503 of starting up) with its detail."""
    if public.status < 500 or isinstance(exc, NotReadyError):
        return
    if isinstance(exc, ForwardedError):
        log.error("%s failed in the engine process: %s", where, exc.message)
    elif isinstance(exc, ServiceError | model_errors.PromptserveError):
        log.error("%s failed: %s", where, exc)
    else:
        log.error("%s failed", where, exc_info=exc)
