"""Bounded object-store calls: every S3 request has a connect and a read timeout and a bounded
number of attempts, and a store that does not answer in time is a 503 `store_unavailable` with
``Retry-After``, never a request (or a job) that hangs for as long as the store does.

The limits are botocore's own (`connect_timeout`, `read_timeout`, `retries` in its ``standard``
mode, set through s3fs's `config_kwargs`); s3fs's retry loop around botocore's is cut to one
pass, or the two would multiply. With the defaults (5 s, 2 attempts) an object-store call that
never gets an answer fails after about 11 s. `BoundedFilesystem` turns the transport errors of
such a call (timeouts, refused or dropped connections) into `StoreUnavailableError`, which
every caller (a DELETE, an upload of `/adapt`, a job's publish, the store sync) lets through
to its answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from promptserve.service.errors import StoreUnavailableError

if TYPE_CHECKING:
    from promptserve.service.settings import Settings

TIMEOUT_S = 5.0  # the defaults of PROMPTSERVE_S3_TIMEOUT_S and PROMPTSERVE_S3_ATTEMPTS
ATTEMPTS = 2


@dataclass(frozen=True)
class CallLimits:
    """How long one object-store request may wait, and how often it is tried."""

    timeout_s: float = TIMEOUT_S  # to connect, and for each read
    attempts: int = ATTEMPTS  # tries per call, the first included

    @classmethod
    def of(cls, settings: Settings) -> CallLimits:
        return cls(settings.s3_timeout_s, settings.s3_attempts)


def unreachable_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean the store did not answer (not that it said no)."""
    errors: list[type[BaseException]] = [TimeoutError, ConnectionError]
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
        from fsspec.exceptions import FSTimeoutError
    except ImportError:  # no s3fs: no S3 store either
        return tuple(errors)
    return (*errors, BotoConnectionError, HTTPClientError, FSTimeoutError)


class BoundedFilesystem:
    """An fsspec filesystem whose calls raise `StoreUnavailableError` when the store does not
    answer in time; everything else passes through unchanged."""

    def __init__(self, fs: Any, url: str, limits: CallLimits) -> None:
        self.fs = fs
        self.url = url
        self.limits = limits
        self._unreachable = unreachable_errors()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.fs, name)
        return self._bounded(attribute) if callable(attribute) else attribute

    def _bounded(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def bounded(*args: Any, **kwargs: Any) -> Any:
            try:
                return call(*args, **kwargs)
            except self._unreachable as exc:
                retry = str(max(1, math.ceil(self.limits.timeout_s)))
                raise StoreUnavailableError(
                    f"the object store {self.url} did not answer in time "
                    f"({self.limits.attempts} attempt(s) of {self.limits.timeout_s:g} s): "
                    f"{type(exc).__name__}; retry later",
                    headers={"Retry-After": retry},
                ) from exc

        return bounded


def open_filesystem(
    url: str, endpoint_url: str | None = None, limits: CallLimits | None = None
) -> Any:
    """The fsspec filesystem for `url`'s scheme, without listing caches, its calls bounded by
    `limits` (`BoundedFilesystem`)."""
    import fsspec

    limits = limits or CallLimits()
    protocol = url.split("://", 1)[0]
    options: dict[str, Any] = {"skip_instance_cache": True, "use_listings_cache": False}
    if protocol in ("s3", "s3a"):
        if endpoint_url:
            options["client_kwargs"] = {"endpoint_url": endpoint_url}
        options["config_kwargs"] = {
            "connect_timeout": limits.timeout_s,
            "read_timeout": limits.timeout_s,
            "retries": {"total_max_attempts": limits.attempts, "mode": "standard"},
        }
    fs = fsspec.filesystem(protocol, **options)
    if protocol in ("s3", "s3a"):
        fs.retries = 1  # botocore retries (above); s3fs's own loop would multiply them
    return BoundedFilesystem(fs, url, limits)
