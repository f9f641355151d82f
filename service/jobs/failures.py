"""Logging a step that fails again and again (the runner's poll while the job database is down)
without flooding the log: one line when it starts failing, then at most one every
`every_s` seconds with the count, and one line when it works again.

Our own few lines rather than a library: the standard library's logging has no rate limit,
and what matters here is the count and the recovery line, which a generic rate-limiting
filter drops.
"""

from __future__ import annotations

import logging
import time

from promptserve.service import faults
from promptserve.service.errors import ServiceError

REPEAT_EVERY_S = 60.0


class FailureLog:
    """The failures of one repeated step, named `what` in the lines it logs to `logger`."""

    def __init__(self, logger: logging.Logger, what: str, every_s: float = REPEAT_EVERY_S) -> None:
        self.log = logger
        self.what = what
        self.every_s = every_s
        self.failures = 0  # since the last success
        self._first = 0.0  # monotonic time of the first failure of this run of them
        self._last_line = 0.0
        self._since_line = 0  # failures since the last line

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self.failures += 1
        self._since_line += 1
        if self.failures == 1:
            self._first = self._last_line = now
            self._since_line = 0
            if isinstance(exc, ServiceError) or faults.classify(exc) is not None:
                self.log.error(
                    "%s failed: %s (retrying; repeats are logged once a minute)", self.what, exc
                )
            else:  # unexpected: its traceback, once
                self.log.error(
                    "%s failed (retrying; repeats are logged once a minute)",
                    self.what,
                    exc_info=exc,
                )
        elif now - self._last_line >= self.every_s:
            self.log.error(
                "%s still failing: %d more failure(s) in %.0f s, %d since %.0f s ago (last: %s)",
                self.what,
                self._since_line,
                now - self._last_line,
                self.failures,
                now - self._first,
                exc,
            )
            self._last_line, self._since_line = now, 0

    def succeeded(self) -> None:
        if self.failures:
            self.log.warning(
                "%s works again after %d failure(s) over %.0f s",
                self.what,
                self.failures,
                time.monotonic() - self._first,
            )
        self.failures = 0
