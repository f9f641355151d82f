"""An API worker process of ``serve --workers N``: HTTP, bodies and image decoding here, the
model in the engine process (`service.remote.engine`).

The worker reads the shared classifier store itself (listings, manifests, deletes: the
directory is the source of truth for every process), prepares pixels with the classifier
version's own preprocessing (read from its manifest, no weights loaded), and sends them with the
name and the resolved version to the engine, which batches them with every other worker's. Jobs
are written to the shared job store by whichever worker takes the request; the engine process's
runner runs them (it polls the store, and the worker's job client wakes it at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import OrderedDict
from typing import Any

import orjson

from promptserve.models.artifact import MANIFEST_FILE
from promptserve.models.classifier import Prediction, preprocess_from_manifest
from promptserve.models.preprocess import FastEvalTransform
from promptserve.service.classify.pipeline import ClassifyQuery, ClassifyResult, check_image_count
from promptserve.service.classify.several import check_classifier_names
from promptserve.service.errors import InvalidRequestError, NotReadyError
from promptserve.service.jobs.client import JobClient
from promptserve.service.remote.link import EngineLink
from promptserve.service.remote.protocol import pixels_to_bytes
from promptserve.service.runtime import ServiceRuntime
from promptserve.service.settings import Settings
from promptserve.service.store import ClassifierStore

log = logging.getLogger(__name__)

REPORT_S = 1.0  # how often a worker refreshes the engine's state and reports its metrics
WORKER_SETTINGS_ENV = "PROMPTSERVE_WORKER_SETTINGS"  # the settings, as JSON, for a worker


class EngineViewStore(ClassifierStore):
    """The shared store as a worker sees it: everything from the directory, except which
    versions are loaded, which only the engine process knows (as of its last status)."""

    engine_loaded: list[tuple[str, str]] = []

    def loaded(self) -> list[tuple[str, str]]:
        return list(self.engine_loaded)


class WorkerRuntime(ServiceRuntime):
    store_class = EngineViewStore
    runs_engine = False

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        if settings.engine_socket is None:
            raise ValueError("an API worker needs the engine process's socket (engine_socket)")
        self.device = self.store.device
        self.link = EngineLink(settings.engine_socket)
        self.job_client = JobClient(self.jobs, self.job_files, wake=self._wake_engine)
        self._wakes: set[asyncio.Task[Any]] = set()
        self.worker_id = str(os.getpid())
        self.engine_state = "starting"
        self.engine_message = "the service is starting: waiting for the engine process"
        # (name, version) -> (manifest stamp, transform, size)
        self._transforms: OrderedDict[tuple[str, str], tuple[Any, FastEvalTransform, int]] = (
            OrderedDict()
        )
        self._watch: asyncio.Task[None] | None = None

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
        self.close_pools()

    def _wake_engine(self) -> None:
        """Have the engine process's runner poll now (the job client's `wake`)."""
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
        """Ask the engine whether the default classifier is ready."""
        try:
            status = await self.link.call({"op": "status"})
        except NotReadyError as exc:
            self.engine_state, self.engine_message = "starting", exc.message
        else:
            self.engine_state, self.engine_message = status["state"], status["message"]
            if isinstance(self.store, EngineViewStore):
                self.store.engine_loaded = [(name, version) for name, version in status["loaded"]]

    def check_ready(self) -> None:
        if self.engine_state != "ready":
            raise NotReadyError(self.engine_message)

    async def classify(self, query: ClassifyQuery) -> ClassifyResult:
        check_image_count(len(query.images), self.settings.max_images_per_request)
        name = query.classifier or self.settings.default_classifier
        if name == self.settings.default_classifier and self.engine_state != "ready":
            await self.refresh()  # it may have become ready since the last look
            self.check_ready()
        version = self.store.resolve(name, query.version)
        transform, size = self._transform(name, version)
        pixels = await self.preparer.prepare(query.images, transform, size)  # [n, 3, S, S]
        shape, data = pixels_to_bytes(pixels)
        header = {
            "op": "classify",
            "classifier": name,
            "version": version,
            "top_k": query.top_k,
            "labels": query.labels,
            "shape": shape,
        }
        return result_from_header(await self.link.call(header, data))

    async def classify_many(self, query: ClassifyQuery, names: list[str]) -> list[ClassifyResult]:
        """The images prepared once here (every classifier must preprocess alike), scored by
        each classifier in the engine process from one pass per engine."""
        check_image_count(len(query.images), self.settings.max_images_per_request)
        names = check_classifier_names(names, query.version)
        prepared = [self._transform(name, self.store.resolve(name)) for name in names]
        configs = [transform.config for transform, _ in prepared]
        for name, config in zip(names[1:], configs[1:], strict=True):
            if config != configs[0]:
                raise InvalidRequestError(
                    f"classifiers {names[0]!r} and {name!r} take different image inputs "
                    "(another backbone); classify with them in separate requests"
                )
        transform, size = prepared[0]
        pixels = await self.preparer.prepare(query.images, transform, size)  # [n, 3, S, S]
        shape, data = pixels_to_bytes(pixels)
        header = {
            "op": "classify_many",
            "classifiers": names,
            "top_k": query.top_k,
            "labels": query.labels,
            "shape": shape,
        }
        reply = await self.link.call(header, data)
        return [result_from_header(result) for result in reply["results"]]

    def _transform(self, name: str, version: str) -> tuple[FastEvalTransform, int]:
        """The version's eval transform and input size, from its manifest (cached while the
        manifest is unchanged)."""
        try:
            info = (self.store.root / name / version / MANIFEST_FILE).stat()
            stamp: Any = (info.st_ino, info.st_mtime_ns)
        except OSError:
            stamp = None  # just deleted: `manifest` below says so
        hit = self._transforms.get((name, version))
        if hit is not None and hit[0] == stamp:
            self._transforms.move_to_end((name, version))
            return hit[1], hit[2]
        config = preprocess_from_manifest(self.store.manifest(name, version))
        transform = FastEvalTransform(config)  # as `Classifier.transform`
        self._transforms[(name, version)] = (stamp, transform, config.size)
        while len(self._transforms) > 4 * self.settings.max_loaded_classifiers:
            self._transforms.popitem(last=False)
        return transform, config.size

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


def result_from_header(reply: dict[str, Any]) -> ClassifyResult:
    """The engine's answer to one classifier's part of a request (see `result_header`)."""
    predictions = [
        [Prediction(label, score) for label, score in row] for row in reply["predictions"]
    ]
    return ClassifyResult(
        reply["classifier"], reply["version"], predictions, reply["encoded_labels"]
    )
