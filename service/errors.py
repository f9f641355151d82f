"""Domain exceptions of the service, and every error code it answers with.

Each service error carries its HTTP status and error code, but this module imports no web
framework. Errors that belong to the model package (bad names, unknown classifiers, versions
and labels) are raised as `models.errors` types; `HTTP_MEANING` below gives each its status
and code. `OTHER_CODES` names the codes answered without a class of their own, so that the
reference (docs/reference/api.md, generated from this module) lists every code.
`service.public_errors` turns any exception into the answer a client sees.
"""

from __future__ import annotations

from typing import Any

from promptserve.models import errors as model_errors
from promptserve.service import faults


class ServiceError(Exception):
    """Base of the errors the service raises on purpose; each knows its HTTP status."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        fields: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers
        self.fields = fields  # a 422's problems: [{"path": [...], "message": ...}]


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
    """No ``Authorization: Bearer <key>`` header, or the wrong key, while an API key is set."""

    status, code = 401, "unauthorized"


class ForbiddenError(ServiceError):
    """A known API key without the scope the route needs, or for a classifier outside its
    prefix."""

    status, code = 403, "forbidden"


class UnknownJobError(ServiceError):
    """No job has this id (it never existed, or ended longer ago than the retention)."""

    status, code = 404, "unknown_job"


class JobFinishedError(ServiceError):
    """Cancelling a job that has already ended."""

    status, code = 409, "job_finished"


class DeleteRefusedError(ServiceError):
    """Deleting this version would leave the service without its default classifier, or an
    alias set explicitly points at it."""

    status, code = 409, "conflict"


class UnknownAliasError(ServiceError):
    """Deleting an alias the classifier does not have."""

    status, code = 404, "unknown_alias"


class ImageTooLargeError(ServiceError):
    """An image that declares more pixels than allowed (a decompression bomb)."""

    status, code = 413, "image_too_large"


class BodyTimeoutError(ServiceError):
    """The request body arrived too slowly (under BODY_MIN_RATE over a window) or not within
    BODY_TIMEOUT_S; the connection is closed."""

    status, code = 408, "body_timeout"


class OverloadedError(ServiceError):
    """Too many requests, or body bytes as they arrive, in flight; retry after Retry-After."""

    status, code = 429, "overloaded"


class BodyTooLargeError(ServiceError):
    """A body larger than ``max_body_bytes``, declared or streamed (chunked)."""

    status, code = 413, "body_too_large"


class TooManyImagesError(ServiceError):
    """More images in one request than ``max_images_per_request`` (or a job's limit)."""

    status, code = 413, "too_many_images"


class UnsupportedMediaTypeError(ServiceError):
    """A body that is neither JSON nor multipart form data."""

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
    """The service is still starting (the default classifier is not loaded yet), or failed to."""

    status, code = 503, "not_ready"


class StoreUnavailableError(ServiceError):
    """The object store did not answer in time (``PROMPTSERVE_S3_TIMEOUT_S``, tried
    ``PROMPTSERVE_S3_ATTEMPTS`` times), or refused the connection: retry after Retry-After."""

    status, code = 503, "store_unavailable"


class JobsUnavailableError(ServiceError):
    """The job database is locked, damaged or unreachable: `/adapt` and `/jobs` answer this
    (with Retry-After) while classification goes on; retry later."""

    status, code = 503, "jobs_unavailable"


class StorageUnavailableError(ServiceError):
    """The store or the job database cannot be written (read-only, I/O errors); retry later."""

    status, code = 503, "storage_unavailable"


class StorageFullError(ServiceError):
    """No space (or quota) is left on the store's or the job database's disk; retry later."""

    status, code = 507, "storage_full"


FAULT_ERRORS: dict[str, type[ServiceError]] = {
    cls.code: cls for cls in (JobsUnavailableError, StorageUnavailableError, StorageFullError)
}


def fault_error(fault: faults.Fault) -> ServiceError:
    """The service error of a storage fault (`service.faults`), with its Retry-After."""
    headers = {"Retry-After": str(fault.retry_after_s)}
    return FAULT_ERRORS[fault.code](fault.message, headers=headers)


class EngineError(ServiceError):
    """The engine failed to score a batch; the detail is in the server log."""

    status, code = 500, "engine_error"


# codes answered without a class of their own above: by public_error's fallbacks, the
# admission middleware and the web framework (service.api.handlers); the reference
# (docs/reference/api.md) lists them beside the classes' docstrings
OTHER_CODES: dict[str, tuple[int, str]] = {
    "artifact_error": (500, "A stored classifier artifact failed its checks or did not load"),
    "internal_error": (500, "An unexpected error; the answer names its kind, the log the rest"),
    "headers_too_large": (431, "The request line and headers pass MAX_HEADER_BYTES or MAX_HEADERS"),
    "too_many_connections": (503, "MAX_CONNECTIONS are open and none is idle; retry later"),
    "client_disconnected": (400, "The client hung up before its body was read"),
    "bad_request": (400, "A request the service or the web framework refuses as such"),
    "not_found": (404, "No route has this path"),
    "method_not_allowed": (405, "The route exists, but not with this HTTP method"),
    "invalid_request": (422, "The request does not validate (a field's type or range)"),
}


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


def validation_fields(errors: object, prefix: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Each of pydantic's errors as ``{"path": [...], "message": ...}``: the field path of the
    problem (``["body", "images", 0]``), `prefix` put in front of paths that lack it."""
    if not isinstance(errors, list | tuple):
        return []
    fields = []
    for error in errors:
        loc = [p if isinstance(p, int) else str(p) for p in error.get("loc", ())]
        if prefix and loc[: len(prefix)] != list(prefix):
            loc = [*prefix, *loc]
        fields.append({"path": loc, "message": str(error.get("msg", "invalid"))})
    return fields


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
