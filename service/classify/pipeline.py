"""The classify pipeline, in LitServe's steps: decode -> batch -> predict -> unbatch -> encode.

Checks run cheapest first (image count, classifier, labels) so a bad request costs nothing
before it is refused; decoding (base64 and image) runs on the decode pool, the engine call in
the batcher, and the scoring (a [B, D] x [D, L] matmul and a softmax) back on the event loop,
where it takes microseconds. Labels and scores are `models.classifier`'s, the same code the
Python API and the CLI use; labels the classifier lacks are encoded in a thread (see
`service.classify.labels`) before the images are decoded, so a refused label costs no decoding.

Images are batched by engine, not by classifier: classifiers on one shared graph (format 2)
fill the same engine calls, and each image is then scored against its own classifier's
classes. A request may name several classifiers (`classify_many`); those that share an engine
are scored from one pass over the images.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import Tensor

from promptserve.models.classifier import (
    Classifier,
    LabelSet,
    Prediction,
    check_labels,
    rank,
    resolve_labels,
)
from promptserve.models.input_engines import BoundInputs, repeat_inputs
from promptserve.service.classify.batcher import MicroBatcher
from promptserve.service.classify.images import ImagePreparer
from promptserve.service.classify.labels import LabelEncoder
from promptserve.service.classify.several import check_classifier_names, check_same_input
from promptserve.service.errors import InvalidRequestError, TooManyImagesError
from promptserve.service.settings import Settings
from promptserve.service.store import ClassifierStore


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
        embeddings = await self.embed(classifier, pixels)  # [n, D]
        top_k = top_k if top_k is not None else self.settings.default_top_k
        predictions = rank(classifier, embeddings, labels, top_k)
        return ClassifyResult(name, classifier.version, predictions, labels.encoded)

    async def embed(self, classifier: Classifier, pixels: Tensor) -> Tensor:
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

    async def classify_many(self, query: ClassifyQuery, names: list[str]) -> list[ClassifyResult]:
        """The query's images classified by each of `names` (newest versions; `query.labels`
        apply to each). The images are decoded once; classifiers sharing an engine are scored
        from one pass, the others get one pass per engine. All must take the same input."""
        check_image_count(len(query.images), self.settings.max_images_per_request)
        names, classifiers, labels = await self._several(query, names)
        first = classifiers[0]
        pixels = await self.preparer.prepare(query.images, first.transform, first.preprocess.size)
        return await self._predict_many(query, names, classifiers, labels, pixels)

    async def classify_many_pixels(
        self, query: ClassifyQuery, names: list[str], pixels: Tensor
    ) -> list[ClassifyResult]:
        """`classify_many` for pixels [n, 3, S, S] prepared elsewhere (an API worker)."""
        check_image_count(int(pixels.shape[0]), self.settings.max_images_per_request)
        names, classifiers, labels = await self._several(query, names)
        size = classifiers[0].preprocess.size
        if tuple(pixels.shape[1:]) != (3, size, size):
            raise InvalidRequestError(
                f"pixels of shape {tuple(pixels.shape)} do not fit {names[0]} "
                f"([n, 3, {size}, {size}]); the worker prepared them for another version"
            )
        return await self._predict_many(query, names, classifiers, labels, pixels)

    async def _several(
        self, query: ClassifyQuery, names: list[str]
    ) -> tuple[list[str], list[Classifier], list[LabelSet]]:
        names = check_classifier_names(names, query.version)
        classifiers = [await self.load(name) for name in names]
        check_same_input(classifiers)
        labels = [await self.resolve(c, query.labels) for c in classifiers]
        return names, classifiers, labels

    async def _predict_many(
        self,
        query: ClassifyQuery,
        names: list[str],
        classifiers: list[Classifier],
        labels: list[LabelSet],
        pixels: Tensor,
    ) -> list[ClassifyResult]:
        top_k = query.top_k if query.top_k is not None else self.settings.default_top_k
        rows = await self.predict(classifiers, labels, pixels, top_k)
        return [
            ClassifyResult(name, classifier.version, predictions, label_set.encoded)
            for name, classifier, label_set, predictions in zip(
                names, classifiers, labels, rows, strict=True
            )
        ]

    async def predict(
        self,
        classifiers: Sequence[Classifier],
        label_sets: Sequence[LabelSet],
        pixels: Tensor,
        top_k: int,
    ) -> list[list[list[Prediction]]]:
        """Decoded pixels [n, 3, S, S] scored by each classifier against its label set: per
        classifier, per image, the `top_k` best. One engine pass per distinct engine among
        the classifiers (run concurrently through the batcher, with other requests)."""
        passes: dict[int, asyncio.Future[Tensor]] = {}
        for classifier in classifiers:
            if classifier.engine_key not in passes:
                passes[classifier.engine_key] = asyncio.ensure_future(
                    self.embed(classifier, pixels)
                )
        try:
            await asyncio.gather(*passes.values())
        finally:
            for future in passes.values():
                future.cancel()  # a no-op for finished ones; the rest must not outlive us
        return [
            rank(classifier, passes[classifier.engine_key].result(), label_set, top_k)
            for classifier, label_set in zip(classifiers, label_sets, strict=True)
        ]

    def _timed(self, run: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """`run`, reporting the CPU time of its thread to `on_engine` (the engine's share of
        the server's CPU; see `Metrics.observe_engine`)."""
        observe = self.on_engine
        if observe is None:
            return run

        def timed(*args: object) -> Tensor:
            started = time.thread_time()
            try:
                return run(*args)
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
