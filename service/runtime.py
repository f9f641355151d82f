"""Everything a running API process holds, started and stopped by the app's lifespan.

Every API process holds the same parts: the settings, the classifier catalog, the image
preparer, the job store and a job runner, the metrics, and an engine client, and offers one
`classify`. In one process the engine client is the `LocalEngine` (weights, labels, batcher)
and the runner runs jobs here; in an API worker of ``serve --workers N`` it is the
`RemoteEngine`, the socket to the engine process, which holds the one `LocalEngine` and runs
the jobs (`service.remote`). An API worker loads no classifier and opens no engine.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from promptserve.service.catalog import Catalog
from promptserve.service.classify.engine import LocalEngine
from promptserve.service.classify.images import ImagePreparer
from promptserve.service.classify.pipeline import ClassifyPipeline, ClassifyQuery
from promptserve.service.classify.scoring import ClassifyResult, EngineClient
from promptserve.service.job_uploads import UploadStore
from promptserve.service.jobs.client import JobClient
from promptserve.service.jobs.housekeeping import JobFiles
from promptserve.service.jobs.metrics import JobCollector
from promptserve.service.jobs.runner import JobRunner
from promptserve.service.jobs.store import JobStore
from promptserve.service.keys import key_ring
from promptserve.service.metrics import Metrics
from promptserve.service.objectstore import open_mirror
from promptserve.service.remote.link import EngineLink
from promptserve.service.remote.worker import RemoteEngine
from promptserve.service.settings import Settings
from promptserve.service.store_sync import StoreSync

log = logging.getLogger(__name__)


class Runtime:
    """One API process: the engine runs here (`local`), or in the engine process when the
    settings name its socket (`engine_socket`, set by ``serve --workers N``)."""

    engine: EngineClient
    job_client: JobClient
    runner: JobRunner | None  # None in an API worker: the engine process runs the jobs

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.keys = key_ring(settings)  # each API process reloads the keys file on its own
        # PROMPTSERVE_STORE=s3://...: a local copy, kept fresh by the process running the engine
        # (started there); every process deletes through it
        mirror = open_mirror(settings)
        self.catalog = Catalog(settings.store, mirror)
        self.jobs = JobStore(settings.job_database, timeout_s=settings.job_db_timeout_s)
        if mirror is not None:  # its uploads take numbers as the job processes' do
            mirror.publish_lock = self.jobs.publish_lock
        self.job_files = JobFiles(
            settings.job_root, settings.keep_job_uploads, shared=UploadStore.of(settings)
        )
        # /adapt bodies are parsed, decoded, checked and written on their own thread, so job
        # intake cannot starve classification (which decodes on the preparer's pool)
        self.intake = ThreadPoolExecutor(max_workers=1, thread_name_prefix="intake")
        self.local: LocalEngine | None = None
        self.sync: StoreSync | None = None
        if settings.engine_socket is None:
            self.local = self.engine = LocalEngine(settings, self.catalog, self.metrics)
            self.runner = JobRunner(self.jobs, settings)
            self.job_client = JobClient(self.jobs, self.job_files, wake=self.runner.wake)
            self.sync = StoreSync(mirror, settings.store_poll_s) if mirror is not None else None
            self.device = self.local.device
            self._add_job_gauges(self.runner)
        else:
            link = EngineLink(settings.engine_socket)
            self.engine = remote = RemoteEngine(link, self.metrics)
            self.runner = None
            self.job_client = JobClient(self.jobs, self.job_files, wake=remote.wake_runner)
            self.device = "cpu"  # pixels are prepared here, on the CPU, for the engine process
        # uint8 pixels go to the engine; on CUDA they may be decoded there (one process only)
        self.preparer = ImagePreparer(
            settings.decode_threads,
            settings.max_image_pixels,
            device=self.device,
            device_decode=settings.device_decode and self.local is not None,
            inline_bytes=settings.inline_decode_bytes,
            inline_pixels=settings.inline_decode_pixels,
        )
        self.pipeline = ClassifyPipeline(
            settings,
            self.catalog,
            self.preparer,
            self.engine,
            on_classifier=self.metrics.observe_classifier,
        )

    def _add_job_gauges(self, runner: JobRunner) -> None:
        self.metrics.add_gauge(
            "promptserve_jobs_running", "Tuning jobs running.", lambda: runner.running
        )
        self.metrics.add_gauge(
            "promptserve_jobs_queued",
            "Tuning jobs waiting for a worker.",
            lambda: runner.queued,
        )
        self.metrics.add_collector(JobCollector(self.jobs))

    async def start(self) -> None:
        if self.local is not None:  # the process running the engine keeps the store tidy
            await asyncio.to_thread(self.catalog.remove_orphaned_staging)
            if self.sync is not None:
                await self.sync.start()
            if not self.keys.enabled:
                log.warning(
                    "neither PROMPTSERVE_API_KEY nor PROMPTSERVE_API_KEYS_FILE is set: the API "
                    "is open to anyone who can reach it"
                )
        if self.runner is not None:
            await self.runner.start()
        await self.engine.start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.stop()
        if self.sync is not None:
            await self.sync.stop()
        await self.engine.stop()
        self.preparer.close()
        self.intake.shutdown(wait=False, cancel_futures=True)

    async def classify(self, query: ClassifyQuery) -> list[ClassifyResult]:
        """One result per classifier the query names; the default when it names none (503
        until it is ready)."""
        return await self.pipeline(query)
