"""What the sync and async clients share around a `Call`: the retry policy (tenacity, honouring
Retry-After), the upload progress bar and the job-waiting bar."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import tenacity
from tqdm import tqdm

from promptserve.client import errors
from promptserve.client.calls import Call
from promptserve.client.types import Job

CHUNK = 64 * 1024
CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    """How the client retries a call that may be retried (see `Call`).

    It retries a 429 or 503 answer after its ``Retry-After`` (when that is at most
    `max_retry_after` seconds; a longer one is raised at once, it is the service saying "not
    now"), else after a random exponential backoff (up to `backoff` * 2**attempt, at most
    `max_backoff` seconds); and a connection that failed. `attempts` counts the first try; 1
    turns retries off."""

    attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 10.0
    max_retry_after: float = 60.0

    def should_retry(self, call: Call[Any], exc: BaseException) -> bool:
        if isinstance(exc, errors.RateLimitError | errors.ServiceUnavailableError):
            late = exc.retry_after is not None and exc.retry_after > self.max_retry_after
            return call.retry_safe and not late
        if isinstance(exc, errors.APIConnectionError):
            if isinstance(exc.__cause__, CONNECT_ERRORS):  # the request never left
                return call.retry_safe
            return call.idempotent
        return False

    def wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        after = getattr(exc, "retry_after", None)
        if after is not None:
            return float(after)
        # "full jitter": a random wait up to backoff * 2**n, capped
        backoff = tenacity.wait_random_exponential(multiplier=self.backoff, max=self.max_backoff)
        return float(backoff(state))

    def options(self, call: Call[Any]) -> dict[str, Any]:
        """Keyword arguments of `tenacity.Retrying` / `AsyncRetrying` for `call`."""
        return {
            "stop": tenacity.stop_after_attempt(max(1, self.attempts)),
            "wait": self.wait,
            "retry": tenacity.retry_if_exception(lambda exc: self.should_retry(call, exc)),
            "reraise": True,
        }


def as_policy(retries: RetryPolicy | int | None) -> RetryPolicy:
    if isinstance(retries, RetryPolicy):
        return retries
    if retries is None:
        return RetryPolicy()
    return RetryPolicy(attempts=retries + 1)


def show_progress(progress: bool | None) -> bool:
    """Progress bars when asked for, or (None) when stderr is a terminal."""
    if progress is None:
        return sys.stderr.isatty()
    return progress


def upload_bar(call: Call[Any], progress: bool) -> tqdm | None:
    if not progress or call.upload is None or call.content is None:
        return None
    return tqdm(total=len(call.content), unit="B", unit_scale=True, desc=call.upload, leave=False)


def chunks(data: bytes, bar: tqdm) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK):
        piece = data[start : start + CHUNK]
        yield piece
        bar.update(len(piece))


async def achunks(data: bytes, bar: tqdm) -> AsyncIterator[bytes]:
    for piece in chunks(data, bar):
        yield piece


class JobBar(tqdm):  # type: ignore[misc]
    """A bar with a free-text `status` after it (epoch, loss, the job's own ETA)."""

    status = ""

    @property
    def format_dict(self) -> dict[str, Any]:
        values = dict(super().format_dict)
        values["status"] = self.status
        return values


class JobWatch:
    """The state of one `wait`: the bar (epoch, loss and the job's own ETA), the deadline, and
    what each polled state of the job means."""

    def __init__(
        self, job_id: str, *, timeout: float | None, poll_interval: float, progress: bool
    ) -> None:
        self.job_id = job_id
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.progress = progress
        self.bar: JobBar | None = None
        self.job: Job | None = None

    def seen(self, job: Job) -> float | None:
        """None when `job` has succeeded; else the seconds to sleep before the next poll.
        Raises `JobFailed` when it failed or was cancelled, `JobTimeout` past the deadline."""
        self.job = job
        self._draw(job)
        if job.state == "succeeded":
            return None
        if job.done:
            raise errors.JobFailed(job)
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise errors.JobTimeout(job, self.timeout or 0.0)
            return min(self.poll_interval, left)
        return self.poll_interval

    def _draw(self, job: Job) -> None:
        if not self.progress:
            return
        p = job.progress
        total = (p.total_steps if p else None) or (p.epochs if p else None) or 1
        done = (p.step if p and p.total_steps else p.epoch if p else 0) or 0
        if self.bar is None:
            self.bar = JobBar(
                total=total,
                desc=f"{job.name} {job.id}",
                bar_format="{desc}: {percentage:3.0f}%|{bar:24}| {status}",
            )
        bar = self.bar
        bar.total = total
        if job.state == "succeeded":
            done = total
        bar.n = min(done, total)
        bar.status = self._status(job)
        bar.refresh()

    @staticmethod
    def _status(job: Job) -> str:
        p = job.progress
        parts = [job.state]
        if p is not None:
            if p.epoch is not None:
                parts.append(f"epoch {p.epoch}/{p.epochs}" if p.epochs else f"epoch {p.epoch}")
            if p.loss is not None:
                parts.append(f"loss {p.loss:.4f}")
            if p.eta_s is not None and not job.done:
                parts.append(f"ETA {tqdm.format_interval(p.eta_s)}")
        if job.result is not None and job.result.version is not None:
            parts.append(f"version {job.result.version}")
        return ", ".join(parts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
