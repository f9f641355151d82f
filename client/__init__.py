"""A Python client of the promptserve /v1 HTTP API: `Client` (sync) and `AsyncClient`.

    from promptserve.client import Client

    with Client("http://127.0.0.1:8000") as client:
        result = client.classify("red_star.png", top_k=3)
        job = client.wait(client.adapt("parts", "images/"))   # images/<class>/*.png

It speaks HTTP only (httpx): importing it loads neither torch nor the service. Errors are
`PromptserveError` subclasses carrying the code, message, status and request id; 429 and 503
answers are retried after their Retry-After (tenacity).
"""

from promptserve.client.client import DEFAULT_URL, AsyncClient, Client
from promptserve.client.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    FieldError,
    InternalServerError,
    JobFailed,
    JobTimeout,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    PromptserveError,
    RateLimitError,
    ServiceUnavailableError,
    UnprocessableError,
)
from promptserve.client.policy import RetryPolicy
from promptserve.client.types import (
    Alias,
    Classifier,
    ClassifierList,
    ClassifierResult,
    ClassifierSummary,
    ClassifierVersion,
    ClassifyResult,
    Embedding,
    EmbeddingsResult,
    Job,
    JobError,
    JobEvent,
    JobEventList,
    JobList,
    JobProgress,
    JobResult,
    Prediction,
)

__all__ = [
    "DEFAULT_URL",
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "Alias",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Classifier",
    "ClassifierList",
    "ClassifierResult",
    "ClassifierSummary",
    "ClassifierVersion",
    "ClassifyResult",
    "Client",
    "ConflictError",
    "Embedding",
    "EmbeddingsResult",
    "FieldError",
    "InternalServerError",
    "Job",
    "JobError",
    "JobEvent",
    "JobEventList",
    "JobFailed",
    "JobList",
    "JobProgress",
    "JobResult",
    "JobTimeout",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "Prediction",
    "PromptserveError",
    "RateLimitError",
    "RetryPolicy",
    "ServiceUnavailableError",
    "UnprocessableError",
]
