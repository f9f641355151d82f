"""Everything a running service holds, started and stopped by the app's lifespan.

Start-up returns at once: the batcher runs, and a background task makes sure the default
classifier exists (creating it on first start: an export takes seconds), loads it and warms the
engine with one batch. Until that task finishes, `/health/live` answers and `/health/ready` is
503; requests naming another, already published classifier are served meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Literal

import torch
from torch import Tensor

from promptserve.models.devices import choose_device
from promptserve.models.engines import warm_batch_sizes
from promptserve.service.classify.batcher import MicroBatcher
from promptserve.service.classify.images import ImagePreparer
from promptserve.service.classify.pipeline import ClassifyPipeline, ClassifyQuery, ClassifyResult
from promptserve.service.errors import NotReadyError, ServiceError, http_meaning
from promptserve.service.jobs.runner import JobRunner
from promptserve.service.jobs.store import JobStore
from promptserve.service.metrics import Metrics, add_device_metrics, add_store_gauges
from promptserve.service.objectstore import StoreSync, open_mirror
from promptserve.service.settings import Settings
from promptserve.service.store import ClassifierStore

log = logging.getLogger(__name__)

State = Literal["starting", "ready", "failed"]
STALE_STAGING_S = 3600.0  # an export's staging folder this old is left from a killed one
RETRY_S = 5.0  # a failed start-up is tried again at most this often (on readiness checks)


class ServiceRuntime:
    """What every API process holds, whichever process runs the engine: the settings, the
    classifier store (listing, manifests, deletes), the job store, the metrics, the decode pool
    and the job intake pool. `Runtime` runs the engine in this process; an API worker of
    ``serve --workers N`` (`service.remote.worker.WorkerRuntime`) sends pixels to the engine
    process instead."""

    device: str
    runner: JobRunner
    store_class: type[ClassifierStore] = ClassifierStore
    runs_engine = True  # False in an API worker process: the engine process runs the model

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device_choice = choose_device(settings.device, settings.engine, self.runs_engine)
        self.store = self.store_class(
            settings.store,
            engine=settings.engine,
            device=self.device_choice.device,
            onnx_threads=settings.onnx_threads,
            max_loaded=settings.max_loaded_classifiers,
            onnx_options=settings.onnx_options(),
        )
        self.metrics = Metrics()
        add_device_metrics(self.metrics, self.device_choice)
        # pixels go to the engine's device when the engine runs in this process; an API worker
        # prepares them on the CPU and sends them to the engine process
        self.preparer = ImagePreparer(
            settings.decode_threads,
            settings.max_image_pixels,
            device=self.store.device if self.runs_engine else "cpu",
            device_decode=settings.device_decode and self.runs_engine,
            inline_bytes=settings.inline_decode_bytes,
        )
        # /adapt bodies are parsed, decoded, checked and written on their own thread, so job
        # intake cannot starve classification (which decodes on the preparer's pool)
        self.intake = ThreadPoolExecutor(max_workers=1, thread_name_prefix="intake")
        self.jobs = JobStore(settings.job_database)
        # PROMPTSERVE_STORE=s3://...: a local copy, kept fresh by the process running the engine
        # (started there); every process deletes through it
        mirror = open_mirror(settings)
        self.sync = StoreSync(mirror, settings.store_poll_s) if mirror is not None else None

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def check_ready(self) -> None:
        """Raise NotReadyError (503) unless the default classifier is loaded and warm."""
        raise NotImplementedError

    async def classify(self, query: ClassifyQuery) -> ClassifyResult:
        raise NotImplementedError

    async def classify_many(self, query: ClassifyQuery, names: list[str]) -> list[ClassifyResult]:
        """The query's images classified by each of `names` (``classifiers=a,b,c``)."""
        raise NotImplementedError

    async def expose_metrics(self) -> str:
        """The Prometheus text of the whole service."""
        raise NotImplementedError

    def close_pools(self) -> None:
        self.preparer.close()
        self.intake.shutdown(wait=False, cancel_futures=True)


class Runtime(ServiceRuntime):
    """The service in one process: the engines, batcher and job runner live here."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.device = self.store.device
        self.batcher = MicroBatcher(
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            queue_size=settings.queue_size,
            on_batch=self.metrics.observe_batch,
        )
        self.pipeline = ClassifyPipeline(
            settings,
            self.store,
            self.batcher,
            self.preparer,
            on_engine=self.metrics.observe_engine,
        )
        self.runner = JobRunner(self.jobs, settings)
        self.state: State = "starting"
        self.failure: str | None = None
        self._startup: asyncio.Task[None] | None = None
        self._retry_at = 0.0  # monotonic time before which a failed start-up is not retried
        self._ready = asyncio.Event()
        self.metrics.add_gauge(
            "promptserve_queue_depth", "Images waiting for the engine.", self._queue_depth
        )
        self.metrics.add_gauge(
            "promptserve_loaded_classifiers",
            "Classifier versions loaded in memory.",
            lambda: len(self.store.loaded()),
        )
        add_store_gauges(self.metrics, self.store)
        self.metrics.add_gauge(
            "promptserve_ready", "1 when the default classifier is loaded and warm.", self._up
        )
        self.metrics.add_gauge(
            "promptserve_jobs_running", "Tuning jobs running.", lambda: self.runner.running
        )
        self.metrics.add_gauge(
            "promptserve_jobs_queued",
            "Tuning jobs waiting for a worker.",
            lambda: self.runner.queued,
        )

    def _queue_depth(self) -> float:
        return float(self.batcher.queue_depth)

    def _up(self) -> float:
        return 1.0 if self.state == "ready" else 0.0

    async def start(self) -> None:
        self._ready = asyncio.Event()  # bound to the running loop
        await self.batcher.start()
        await asyncio.to_thread(self.store.remove_stale_staging, STALE_STAGING_S)
        if self.sync is not None:
            await self.sync.start()
        await self.runner.start()
        self._startup = asyncio.create_task(self._prepare_default(), name="prepare-default")
        if self.settings.api_key is None:
            log.warning(
                "PROMPTSERVE_API_KEY is not set: the API is open to anyone who can reach it"
            )

    async def stop(self) -> None:
        if self._startup is not None and not self._startup.done():
            self._startup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._startup
        await self.runner.stop()
        if self.sync is not None:
            await self.sync.stop()
        await self.batcher.stop()
        self.pipeline.labels.close()
        self.close_pools()

    async def wait_ready(self, timeout: float | None = None) -> State:
        """Wait until start-up has finished (either way); returns the state."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self.state

    async def _prepare_default(self) -> None:
        name = self.settings.default_classifier
        try:
            if self.settings.create_default:
                await asyncio.to_thread(
                    self.store.ensure_default, name, self.settings.default_backbone
                )
            classifier = await self.pipeline.load(name)
            size = classifier.preprocess.size
            # one call outside the batcher, so warm-up shows in no request metric
            for batch in warm_batch_sizes(self.device, self.settings.max_batch_size):
                await asyncio.to_thread(classifier.embed, torch.zeros(batch, 3, size, size))
        except Exception as exc:  # reported by /health/ready; the process stays up
            log.exception("could not prepare the default classifier %r", name)
            # /health/ready is public: name the problem, keep paths and internals in the log
            if isinstance(exc, ServiceError):
                self.failure = exc.message
            elif http_meaning(exc) is not None:  # a user-facing model error: no paths in it
                self.failure = str(exc)
            else:
                self.failure = f"{type(exc).__name__} (see the server log)"
            self.state = "failed"
        else:
            self.state, self.failure = "ready", None
            log.info("ready: default classifier %s version %s", name, classifier.version)
        finally:
            self._ready.set()

    def check_ready(self) -> None:
        """Raise NotReadyError (503) unless the default classifier is loaded and warm.

        After a failed start-up the preparation is retried (at most every RETRY_S seconds)
        when readiness is asked for, so a default classifier published later, by a training
        job or by hand, makes the service ready without a restart.
        """
        if self.state == "starting":
            raise NotReadyError("the service is starting: the default classifier is being prepared")
        if self.state == "failed":
            self._retry_default()
            raise NotReadyError(f"the default classifier could not be prepared: {self.failure}")

    def _retry_default(self) -> None:
        now = time.monotonic()
        if (self._startup is not None and not self._startup.done()) or now < self._retry_at:
            return
        self._retry_at = now + RETRY_S
        self._startup = asyncio.create_task(self._prepare_default(), name="prepare-default")

    async def classify(self, query: ClassifyQuery) -> ClassifyResult:
        """Classify with the named classifier, or the default one (503 until it is ready)."""
        return await self.pipeline(self._named(query))

    async def classify_pixels(self, query: ClassifyQuery, pixels: Tensor) -> ClassifyResult:
        """`classify` for pixels [n, 3, S, S] an API worker process prepared."""
        return await self.pipeline.classify_pixels(self._named(query), pixels)

    async def classify_many(self, query: ClassifyQuery, names: list[str]) -> list[ClassifyResult]:
        return await self.pipeline.classify_many(query, names)

    async def classify_many_pixels(
        self, query: ClassifyQuery, names: list[str], pixels: Tensor
    ) -> list[ClassifyResult]:
        """`classify_many` for pixels [n, 3, S, S] an API worker process prepared."""
        return await self.pipeline.classify_many_pixels(query, names, pixels)

    def _named(self, query: ClassifyQuery) -> ClassifyQuery:
        """The query with the default classifier filled in (503 until it is ready)."""
        if query.classifier is None or query.classifier == self.settings.default_classifier:
            self.check_ready()
            query = replace(query, classifier=self.settings.default_classifier)
        return query

    async def expose_metrics(self) -> str:
        return self.metrics.expose()
