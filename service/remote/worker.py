"""An API worker process of ``serve --workers N``: HTTP, bodies and image decoding here, the
model in the engine process (`service.remote.engine`).

The worker's `Runtime` reads the shared classifier catalog itself (listings, manifests,
deletes: the directory is the source of truth for every process), checks each request and
prepares its uint8 pixels with the version's own preprocessing (read from its manifest, no
weights loaded), exactly as in one process; its engine client is a `RemoteEngine`, which sends
the score request to the engine process, where it is batched with every other worker's. Jobs
are written to the shared job store by whichever worker takes the request; the engine process
runs them (its runner polls the store, and a worker's submission wakes it at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

import orjson
from torch import Tensor

from promptserve.service.classify.scoring import ClassifyResult, EmbedRequest, ScoreRequest
from promptserve.service.errors import NotReadyError
from promptserve.service.metrics import Metrics
from promptserve.service.remote.link import EngineLink
from promptserve.service.remote.protocol import (
    decode_embeddings,
    decode_results,
    encode_embed,
    encode_score,
)
from promptserve.service.settings import Settings

log = logging.getLogger(__name__)

REPORT_S = 1.0  # how often a worker refreshes the engine's state and reports its metrics
WORKER_SETTINGS_ENV = "PROMPTSERVE_WORKER_SETTINGS"  # the settings, as JSON, for a worker


class RemoteEngine:
    """The engine process as an API worker's engine client (`service.classify.scoring`): score
    calls over the link, and the engine's readiness and loaded versions as of its last status
    (asked every REPORT_S seconds, with this worker's HTTP metrics reported alongside)."""

    def __init__(self, link: EngineLink, metrics: Metrics) -> None:
        self.link = link
        self.metrics = metrics
        self.worker_id = str(os.getpid())
        self.state = "starting"
        self.message = "the service is starting: waiting for the engine process"
        self._loaded: list[tuple[str, str]] = []
        self._watch: asyncio.Task[None] | None = None
        self._wakes: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._watch = asyncio.create_task(self._watch_engine(), name="engine-watch")

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for task in list(self._wakes):
            task.cancel()
        await self.link.close()

    def wake_runner(self) -> None:
        """Have the engine process's job runner poll now (the job client's `wake`)."""
        task = asyncio.get_running_loop().create_task(self._call_wake())
        self._wakes.add(task)
        task.add_done_callback(self._wakes.discard)

    async def _call_wake(self) -> None:
        # if the engine cannot be told, its runner still sees the job at its next poll
        with contextlib.suppress(NotReadyError):
            await self.link.call({"op": "wake"})

    async def _watch_engine(self) -> None:
        while True:
            await self.refresh()
            with contextlib.suppress(NotReadyError):
                await self.link.call(
                    {"op": "report", "worker": self.worker_id, "http": self.metrics.http_state()}
                )
            await asyncio.sleep(REPORT_S)

    async def refresh(self) -> None:
        """Ask the engine whether the default classifier is ready, and what it has loaded."""
        try:
            status = await self.link.call({"op": "status"})
        except NotReadyError as exc:
            self.state, self.message = "starting", exc.message
        else:
            self.state, self.message = status["state"], status["message"]
            self._loaded = [(name, version) for name, version in status["loaded"]]

    async def ready(self) -> None:
        if self.state != "ready":
            await self.refresh()  # it may have become ready since the last look
        if self.state != "ready":
            raise NotReadyError(self.message)

    def loaded(self) -> list[tuple[str, str]]:
        return list(self._loaded)

    async def score(self, request: ScoreRequest, pixels: Tensor) -> list[ClassifyResult]:
        header, payload = encode_score(request, pixels)
        return decode_results(await self.link.call(header, payload))

    async def embed(self, request: EmbedRequest, pixels: Tensor | None) -> Tensor:
        header, payload = encode_embed(request, pixels)
        return decode_embeddings(await self.link.call(header, payload))

    async def expose_metrics(self) -> str:
        header = {"op": "metrics", "worker": self.worker_id, "http": self.metrics.http_state()}
        reply = await self.link.call(header)
        return str(reply["text"])


def dump_settings(settings: Settings) -> str:
    """`settings` as JSON for `WORKER_SETTINGS_ENV`, the API key included (JSON dumps hide it)."""
    data = settings.model_dump(mode="json")
    if settings.api_key is not None:
        data["api_key"] = settings.api_key.get_secret_value()
    return orjson.dumps(data).decode()


def load_settings() -> Settings:
    """The settings the supervisor handed this worker (`dump_settings`)."""
    text = os.environ.get(WORKER_SETTINGS_ENV)
    if text is None:
        raise RuntimeError(f"{WORKER_SETTINGS_ENV} is not set: start workers with serve --workers")
    return Settings(**orjson.loads(text))
