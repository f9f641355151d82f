"""The local engine: the model side of the classify path, in the process that holds the weights.

It holds the loaded classifiers (`ClassifierCache`), the label encoder, the micro-batcher, and
the start-up of the default classifier. `score` takes uint8 pixels [n, 3, S, S] and checked
label requests (`service.classify.scoring`), normalises the pixels on the engine's device,
embeds them through the batcher, and ranks them against each classifier's label set, back on
the event loop, where a [B, D] x [D, L] matmul and a softmax take microseconds. Labels and
scores are `models.classifier`'s, the same code the Python API and the CLI use.

Images are batched by engine, not by classifier: classifiers on one shared graph (format 2)
fill the same engine calls, and each image is then scored against its own classifier's
classes; classifiers of one request that share an engine are scored from one pass.

Start-up returns at once: the batcher runs, and a background task makes sure the default
classifier exists (creating it on first start: an export takes seconds), loads it and warms the
engine with one batch. Until that task finishes, `ready` raises NotReadyError (503); requests
naming another, already published classifier are served meanwhile. After a failed start-up the
preparation is retried (at most every RETRY_S seconds) when readiness is asked for, so a
default classifier published later, by a training job or by hand, makes the service ready
without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from promptserve.models.classifier import Classifier, rank
from promptserve.models.devices import choose_device
from promptserve.models.engines import warm_batch_sizes
from promptserve.models.input_engines import BoundInputs, repeat_inputs
from promptserve.models.preprocess import normalise
from promptserve.service.catalog import Catalog
from promptserve.service.classify.batcher import MicroBatcher
from promptserve.service.classify.cache import ClassifierCache
from promptserve.service.classify.labels import AsyncLabelEncoder
from promptserve.service.classify.scoring import ClassifyResult, EmbedRequest, ScoreRequest
from promptserve.service.errors import InvalidRequestError, NotReadyError
from promptserve.service.gpu_metrics import add_gpu_metrics
from promptserve.service.metrics import (
    Metrics,
    add_device_metrics,
    add_precision_metrics,
    add_store_gauges,
)
from promptserve.service.public_errors import public_error
from promptserve.service.settings import Settings
from promptserve.service.tracing import Attributes, span
from promptserve.service.tracing import enabled as tracing_enabled

log = logging.getLogger(__name__)

State = Literal["starting", "ready", "failed"]
RETRY_S = 5.0  # a failed start-up is tried again at most this often (on readiness checks)


class LocalEngine:
    def __init__(self, settings: Settings, catalog: Catalog, metrics: Metrics) -> None:
        self.settings = settings
        self.catalog = catalog
        self.metrics = metrics
        self.device_choice = choose_device(settings.device, settings.engine)
        add_device_metrics(metrics, self.device_choice)
        add_gpu_metrics(metrics, self.device_choice.device)
        self.cache = ClassifierCache(
            catalog,
            engine_kind=settings.engine,
            device=self.device_choice.device,
            onnx_threads=settings.onnx_threads,
            max_loaded=settings.max_loaded_classifiers,
            onnx_options=settings.onnx_options(),
            precision=settings.engine_precision,
            gate=settings.gate_thresholds(),
        )
        self.device = self.cache.device
        self.labels = AsyncLabelEncoder(
            device=self.device,
            max_cached_labels=settings.max_cached_labels,
            max_learners=settings.max_loaded_classifiers,
        )
        self.batcher = MicroBatcher(
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            queue_size=settings.queue_size,
            on_batch=metrics.observe_batch,
        )
        self.state: State = "starting"
        self.failure: str | None = None
        self._startup: asyncio.Task[None] | None = None
        self._retry_at = 0.0  # monotonic time before which a failed start-up is not retried
        self._ready = asyncio.Event()
        metrics.add_gauge(
            "promptserve_queue_depth",
            "Images waiting for the engine.",
            lambda: float(self.batcher.queue_depth),
        )
        metrics.add_gauge(
            "promptserve_loaded_classifiers",
            "Classifier versions loaded in memory.",
            lambda: len(self.cache.loaded()),
        )
        add_store_gauges(metrics, self.cache)
        add_precision_metrics(metrics, self.cache)
        metrics.add_gauge(
            "promptserve_ready",
            "1 when the default classifier is loaded and warm.",
            lambda: 1.0 if self.state == "ready" else 0.0,
        )

    # --- lifecycle and readiness -----------------------------------------------------------

    async def start(self) -> None:
        self._ready = asyncio.Event()  # bound to the running loop
        await self.batcher.start()
        self._startup = asyncio.create_task(self._prepare_default(), name="prepare-default")

    async def stop(self) -> None:
        if self._startup is not None and not self._startup.done():
            self._startup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._startup
        await self.batcher.stop()
        self.labels.close()

    async def wait_ready(self, timeout: float | None = None) -> State:
        """Wait until start-up has finished (either way); returns the state."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self.state

    async def ready(self) -> None:
        self.check_ready()

    def check_ready(self) -> None:
        """Raise NotReadyError (503) unless the default classifier is loaded and warm."""
        if self.state == "starting":
            raise NotReadyError("the service is starting: the default classifier is being prepared")
        if self.state == "failed":
            self._retry_default()
            raise NotReadyError(f"the default classifier could not be prepared: {self.failure}")

    async def _prepare_default(self) -> None:
        name = self.settings.default_classifier
        try:
            if self.settings.create_default:
                await asyncio.to_thread(
                    self.catalog.ensure_default, name, self.settings.default_backbone
                )
            classifier = await self.load(name)
            size = classifier.preprocess.size
            # one call outside the batcher, so warm-up shows in no request metric
            for batch in warm_batch_sizes(self.device, self.settings.max_batch_size):
                await asyncio.to_thread(classifier.embed, torch.zeros(batch, 3, size, size))
        except Exception as exc:  # reported by /health/ready; the process stays up
            log.exception("could not prepare the default classifier %r", name)
            self.failure = public_error(exc).message  # public: no paths, the log has them
            self.state = "failed"
        else:
            self.state, self.failure = "ready", None
            log.info("ready: default classifier %s version %s", name, classifier.version)
        finally:
            self._ready.set()

    def _retry_default(self) -> None:
        now = time.monotonic()
        if (self._startup is not None and not self._startup.done()) or now < self._retry_at:
            return
        self._retry_at = now + RETRY_S
        self._startup = asyncio.create_task(self._prepare_default(), name="prepare-default")

    def loaded(self) -> list[tuple[str, str]]:
        return self.cache.loaded()

    async def expose_metrics(self) -> str:
        return await asyncio.to_thread(self.metrics.expose)  # it may query the job store

    # --- scoring ---------------------------------------------------------------------------

    async def load(self, name: str, version: str | None = None) -> Classifier:
        """The classifier version: a loaded one is looked up on the loop (no thread hop); a
        load (first use, a new version) runs off the loop."""
        if version is not None:
            loaded = self.cache.get_loaded(name, version)
            if loaded is not None:
                return loaded
        return await asyncio.to_thread(self.cache.get, name, version)

    async def score(self, request: ScoreRequest, pixels: Tensor) -> list[ClassifyResult]:
        """uint8 pixels [n, 3, S, S] scored by each target; one engine pass per distinct
        engine among them (run concurrently through the batcher, with other requests)."""
        classifiers = [await self.load(t.classifier, t.version) for t in request.targets]
        cfg = classifiers[0].preprocess
        if tuple(pixels.shape[1:]) != (3, cfg.size, cfg.size):
            raise InvalidRequestError(
                f"pixels of shape {tuple(pixels.shape)} do not fit {classifiers[0].name} "
                f"{classifiers[0].version} ([n, 3, {cfg.size}, {cfg.size}])"
            )
        max_tokens = self.settings.max_label_tokens
        label_sets = [
            await self.labels.resolve(c, t.labels, max_tokens)
            for c, t in zip(classifiers, request.targets, strict=True)
        ]
        normalised = normalise(pixels.to(self.device, non_blocking=True), cfg)  # [n, 3, S, S]
        passes: dict[int, asyncio.Future[Tensor]] = {}
        for classifier in classifiers:
            if classifier.engine_key not in passes:
                passes[classifier.engine_key] = asyncio.ensure_future(
                    self._embed(classifier, normalised)
                )
        try:
            await asyncio.gather(*passes.values())
        finally:
            for future in passes.values():
                future.cancel()  # a no-op for finished ones; the rest must not outlive us
        with span("score", _scored(classifiers) if tracing_enabled() else None):
            return [
                ClassifyResult(
                    target.classifier,
                    classifier.version,
                    rank(classifier, passes[classifier.engine_key].result(), labels, request.top_k),
                    labels.encoded,
                )
                for target, classifier, labels in zip(
                    request.targets, classifiers, label_sets, strict=True
                )
            ]

    async def embed(self, request: EmbedRequest, pixels: Tensor | None) -> Tensor:
        """The embeddings the classifier scores with (see `EngineClient.embed`): images through
        the batcher like any classify request; label texts from its stored rows, or encoded
        by its own text path on the label thread (as open-vocabulary labels are)."""
        classifier = await self.load(request.classifier, request.version)
        if request.labels is not None:
            max_tokens = self.settings.max_label_tokens
            labels = await self.labels.resolve(classifier, request.labels, max_tokens)
            embeddings = labels.embeddings
        else:
            assert pixels is not None
            cfg = classifier.preprocess
            if tuple(pixels.shape[1:]) != (3, cfg.size, cfg.size):
                raise InvalidRequestError(
                    f"pixels of shape {tuple(pixels.shape)} do not fit {classifier.name} "
                    f"{classifier.version} ([n, 3, {cfg.size}, {cfg.size}])"
                )
            normalised = normalise(pixels.to(self.device, non_blocking=True), cfg)
            embeddings = await self._embed(classifier, normalised)
        return F.normalize(embeddings.float(), dim=-1).cpu()

    async def _embed(self, classifier: Classifier, pixels: Tensor) -> Tensor:
        """[n, 3, S, S] -> [n, D] through the batcher, batched with every request whose
        classifier runs on the same engine (whatever classifier that is)."""
        engine = classifier.engine
        if isinstance(engine, BoundInputs):  # a shared prompt graph: its tensors per image
            inputs = repeat_inputs(engine.inputs, int(pixels.shape[0]))
            run = self._timed(engine.engine)
            return await self.batcher.submit(classifier.engine_key, pixels, run, inputs)
        return await self.batcher.submit(
            classifier.engine_key, pixels, self._timed(classifier.embed)
        )

    def _timed(self, run: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """`run`, reporting the CPU time of its thread to the metrics (the engine's share of
        the server's CPU; see `Metrics.observe_engine`)."""
        observe = self.metrics.observe_engine

        def timed(*args: object) -> Tensor:
            started = time.thread_time()
            try:
                return run(*args)
            finally:
                observe(time.thread_time() - started)

        return timed


def _scored(classifiers: list[Classifier]) -> Attributes:
    """The `score` span's attributes: the versions scored."""
    return {"promptserve.classifiers": ",".join(f"{c.name}@{c.version}" for c in classifiers)}
