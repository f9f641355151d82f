"""Process logging for the service: the one setup (`configure_logging`, shared with the training
commands in `training.logs`), and how a request's id reaches every line written for it.

The request id lives in a context variable (`LOG_CONTEXT`) that `RequestIdMiddleware` sets for
each HTTP request; the log filter copies it into every record. It travels on its own where
asyncio copies contexts (tasks); this module carries it over the other hops: a thread pool
(`run_in`), the engine socket (the score and embed messages name it, and the engine process
sets it while it answers, `bound`), and a job (its spec keeps the ``POST /adapt`` request's
id, which the job process binds for its whole life and the runner names in its lines about the
job).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import Any, TypeVar

from promptserve.training.logs import (
    LOG_CONTEXT,
    LogContext,
    LogFormat,
    configure_logging,
    current_request_id,
)

__all__ = [
    "LOG_CONTEXT",
    "LogContext",
    "LogFormat",
    "bound",
    "configure_logging",
    "current_request_id",
    "note_served",
    "run_in",
]

T = TypeVar("T")


async def run_in(executor: Executor | None, fn: Callable[..., T], *args: Any) -> T:
    """`loop.run_in_executor`, with the caller's context (its request id) in the thread."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    return await loop.run_in_executor(executor, context.run, fn, *args)


def note_served(classifier: str, version: str) -> None:
    """Name the classifier and version that answer this request in its later lines (several:
    comma-separated), the access log's included."""
    context = LOG_CONTEXT.get()
    if context is not None:
        context.classifier, context.version = classifier, version


@contextmanager
def bound(
    request_id: str | None, classifier: str | None = None, version: str | None = None
) -> Iterator[None]:
    """Log the lines written inside as lines of request `request_id` (none: unchanged)."""
    if request_id is None:
        yield
        return
    token = LOG_CONTEXT.set(LogContext(request_id, classifier, version))
    try:
        yield
    finally:
        LOG_CONTEXT.reset(token)
