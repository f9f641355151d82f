"""The client's exceptions: one per kind of failure a caller may want to handle.

An error answer of the service (`{"error": {"code", "message", "request_id", "fields"}}`)
becomes a `PromptserveError` subclass chosen by its HTTP status, carrying the code, message,
request id and status; a 422 also carries the field path of each problem. A service that cannot
be reached is an `APIConnectionError`; a job that ends without publishing is a `JobFailed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FieldError:
    """One problem of a 422: where in the request (``("body", "images", 0)``) and what."""

    path: tuple[str | int, ...]
    message: str

    def __str__(self) -> str:
        where = ".".join(str(p) for p in self.path if p != "body") or "request"
        return f"{where}: {self.message}"


class PromptserveError(Exception):
    """Base of every error this client raises."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        fields: tuple[FieldError, ...] = (),
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.request_id = request_id
        self.retry_after = retry_after
        self.fields = fields
        self.body = body

    def __str__(self) -> str:
        head = f"{self.status} {self.code}: " if self.status is not None else ""
        tail = f" (request {self.request_id})" if self.request_id else ""
        return f"{head}{self.message}{tail}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r}, request_id={self.request_id!r})"
        )


class APIError(PromptserveError):
    """The service answered with an error status (a subclass names the common ones)."""


class BadRequestError(APIError):
    """400 (a body that does not parse, bytes that are not an image) or 415."""


class AuthenticationError(APIError):
    """401: no API key, or one the service does not know (PROMPTSERVE_API_KEY or ``api_key=``)."""


class PermissionDeniedError(APIError):
    """403: the request is not allowed: the key lacks the route's scope or the classifier's
    prefix, or it would tune the protected default classifier."""


class NotFoundError(APIError):
    """404: no such classifier, version, alias, job or route."""


class ConflictError(APIError):
    """409: the request conflicts with the current state (cancelling an ended job, deleting a
    version an alias points at)."""


class PayloadTooLargeError(APIError):
    """413: too many images, too many bytes, or an image with too many pixels."""


class UnprocessableError(APIError):
    """422: the request parses but does not validate; `fields` says where."""


class RateLimitError(APIError):
    """429: the service is busy; retried by the client (after Retry-After) before this is
    raised."""


class ServiceUnavailableError(APIError):
    """503: the service is starting or cannot take the request; retried before this is raised."""


class InternalServerError(APIError):
    """5xx other than 503: the detail is in the server's log, under `request_id`."""


class APIConnectionError(PromptserveError):
    """The service could not be reached, or the connection broke before an answer came."""


class APITimeoutError(APIConnectionError):
    """No answer within the client's timeout."""


class JobFailed(PromptserveError):  # noqa: N818  # the name the issue and docs use
    """A waited-for job ended failed or cancelled; `job` is its final state."""

    def __init__(self, job: Any) -> None:
        error = getattr(job, "error", None)
        reason = f"{error.reason}: {error.message}" if error is not None else job.state
        super().__init__(f"job {job.id} {job.state} ({reason})", code=f"job_{job.state}")
        self.job = job


class JobTimeout(PromptserveError):  # noqa: N818
    """`wait` gave up before the job ended; `job` is its last state seen."""

    def __init__(self, job: Any, timeout: float) -> None:
        super().__init__(f"job {job.id} still {job.state} after {timeout:g}s", code="job_timeout")
        self.job = job


STATUS_ERRORS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: BadRequestError,
    422: UnprocessableError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def error_class(status: int) -> type[APIError]:
    if status in STATUS_ERRORS:
        return STATUS_ERRORS[status]
    return InternalServerError if status >= 500 else APIError
