"""The classify pipeline, in LitServe's steps: decode -> batch -> predict -> unbatch -> encode.

Checks run cheapest first (image count, classifier, labels) so a bad request costs nothing
before it is refused; decoding (base64 and image) runs on the decode pool, the engine call in
the batcher, and the scoring (a [B, D] x [D, L] matmul and a softmax) back on the event loop,
where it takes microseconds. Labels and scores are `models.classifier`'s, the same code the
Python API and the CLI use; labels the classifier lacks are encoded in a thread (see
`service.classify.labels`) before the images are decoded, so a refused label costs no decoding.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from models.classifier import Classifier, LabelSet, Prediction, check_labels, rank, resolve_labels
from service.classify.batcher import MicroBatcher, Run
from service.classify.images import ImagePreparer
from service.classify.labels import LabelEncoder
from service.errors import InvalidRequestError, TooManyImagesError
from service.settings import Settings
from service.store import ClassifierStore


@dataclass(frozen=True)
class ClassifyQuery:
    """One classify request, whatever shape it arrived in; images are still encoded (file
    bytes, or base64 text from a JSON body)."""

    images: list[bytes] | list[str]
    classifier: str | None = None  # None: the default classifier (the runtime fills it in)
    version: str | None = None  # None: the newest version
    top_k: int | None = None  # None: the configured default; "all" is len(labels)
    labels: list[str] | None = None  # None: all of the classifier's classes


@dataclass(frozen=True)
class ClassifyResult:
    classifier: str
    version: str
    predictions: list[list[Prediction]]  # per image, best first
    encoded_labels: list[str] = field(default_factory=list)  # labels encoded on the fly


def check_image_count(count: int, limit: int) -> None:
    if count == 0:
        raise InvalidRequestError("no images: send at least one image")
    if count > limit:
        raise TooManyImagesError(f"{count} images in one request; at most {limit} allowed")


class ClassifyPipeline:
    def __init__(
        self,
        settings: Settings,
        store: ClassifierStore,
        batcher: MicroBatcher,
        preparer: ImagePreparer,
        labels: LabelEncoder | None = None,
        on_engine: Callable[[float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_engine = on_engine  # told the CPU seconds of each engine call
        self.store = store
        self.batcher = batcher
        self.preparer = preparer
        self.labels = labels or LabelEncoder(
            device=store.device,
            max_cached_labels=settings.max_cached_labels,
            max_learners=settings.max_loaded_classifiers,
        )

    async def load(self, name: str, version: str | None = None) -> Classifier:
        """The classifier version: a loaded one is looked up on the loop (no thread hop); a
        load (first use, a new version) runs off the loop."""
        loaded = self.store.get_loaded(name, version)
        return (
            loaded if loaded is not None else await asyncio.to_thread(self.store.get, name, version)
        )

    async def __call__(self, query: ClassifyQuery) -> ClassifyResult:
        check_image_count(len(query.images), self.settings.max_images_per_request)
        name = query.classifier or self.settings.default_classifier
        classifier = await self.load(name, query.version)
        labels = await self.resolve(classifier, query.labels)
        size = classifier.preprocess.size
        pixels = await self.preparer.prepare(query.images, classifier.transform, size)  # [n,3,S,S]
        return await self._predict(name, classifier, labels, query.top_k, pixels)

    async def classify_pixels(self, query: ClassifyQuery, pixels: Tensor) -> ClassifyResult:
        """The model-side steps alone, for pixels [n, 3, S, S] prepared elsewhere (by an API
        worker process): classifier, labels, the batched engine call, the ranking.
        `query.images` is not read."""
        check_image_count(int(pixels.shape[0]), self.settings.max_images_per_request)
        name = query.classifier or self.settings.default_classifier
        classifier = await self.load(name, query.version)
        size = classifier.preprocess.size
        if tuple(pixels.shape[1:]) != (3, size, size):
            raise InvalidRequestError(
                f"pixels of shape {tuple(pixels.shape)} do not fit {name} {classifier.version} "
                f"([n, 3, {size}, {size}]); the worker prepared them for another version"
            )
        labels = await self.resolve(classifier, query.labels)
        return await self._predict(name, classifier, labels, query.top_k, pixels)

    async def _predict(
        self,
        name: str,
        classifier: Classifier,
        labels: LabelSet,
        top_k: int | None,
        pixels: Tensor,  # [n, 3, S, S]
    ) -> ClassifyResult:
        key = (name, classifier.version)
        run = self._timed(classifier.embed)
        embeddings = await self.batcher.submit(key, pixels, run)  # [n, D]
        top_k = top_k if top_k is not None else self.settings.default_top_k
        predictions = rank(classifier, embeddings, labels, top_k)
        return ClassifyResult(name, classifier.version, predictions, labels.encoded)

    def _timed(self, run: Run) -> Run:
        """`run`, reporting the CPU time of its thread to `on_engine` (the engine's share of
        the server's CPU; see `Metrics.observe_engine`)."""
        observe = self.on_engine
        if observe is None:
            return run

        def timed(pixels: Tensor) -> Tensor:
            started = time.thread_time()
            try:
                return run(pixels)
            finally:
                observe(time.thread_time() - started)

        return timed

    async def resolve(self, classifier: Classifier, names: list[str] | None) -> LabelSet:
        """The label set of a request; names the classifier lacks are encoded off the loop,
        all in one batch (cached ones come from the encoder's LRU)."""
        if names is None:
            return resolve_labels(classifier, None)
        s = self.settings
        request = check_labels(
            classifier,
            names,
            max_labels=s.max_labels,
            max_new=s.max_new_labels,
            max_chars=s.max_label_chars,
        )
        if not request.new:
            return resolve_labels(classifier, request)
        encoded = await self.labels.encode_async(
            classifier, request.new, s.max_label_tokens
        )  # [N, D]
        return resolve_labels(classifier, request, encoded)
