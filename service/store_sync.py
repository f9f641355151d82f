"""Keeping an API replica's local store in step with the object store: `StoreSync` pulls the
mirror (`service.objectstore.StoreMirror.pull`) on a background task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from promptserve.service.errors import StoreUnavailableError
from promptserve.service.objectstore import PullReport, StoreMirror

log = logging.getLogger(__name__)


class StoreSync:
    """Pull the mirror every `interval_s` seconds on a background task (an API replica)."""

    def __init__(self, mirror: StoreMirror, interval_s: float) -> None:
        self.mirror = mirror
        self.interval_s = interval_s
        self.on_change: list[Callable[[PullReport], None]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """One pull now (the replica starts with the store as it is), then every interval; a
        store that does not answer leaves the local copy to be served until it does."""
        try:
            await asyncio.to_thread(self.sync)
        except StoreUnavailableError as exc:
            log.warning("serving the local copy of %s for now: %s", self.mirror.url, exc.message)
        self._task = asyncio.create_task(self._loop(), name="store-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def sync(self) -> PullReport:
        report = self.mirror.pull()
        for callback in self.on_change:
            callback(report)
        return report

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await asyncio.to_thread(self.sync)
            except StoreUnavailableError as exc:  # one line, not a traceback, per failed poll
                log.warning("could not synchronise: %s", exc.message)
            except Exception:  # an unreachable bucket must not end the loop: log, try again
                log.exception("could not synchronise with %s", self.mirror.url)
