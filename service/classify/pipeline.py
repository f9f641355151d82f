"""The classify path, in LitServe's steps: check -> decode -> score (batch, predict, unbatch).

One implementation for both process modes. Checks run once and cheapest first (image count,
classifier names, readiness of the default, versions, same input, label syntax), all from the
catalog (manifests, no weights), so a bad request costs nothing before it is refused. The
images are then decoded once on the decode pool into uint8 pixels with the version's own
preprocessing, and an engine client scores them: the local engine in this process, or the
engine process over its socket (`service.classify.scoring`).

A request may name several classifiers (``classifiers=a,b,c``): the images are decoded once,
so all must preprocess images alike; the engine scores those that share an engine from one
pass over the images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from promptserve.models.artifact import check_name
from promptserve.models.classifier import LabelRequest, check_labels
from promptserve.service.catalog import Catalog, VersionInfo
from promptserve.service.classify.images import ImagePreparer
from promptserve.service.classify.scoring import (
    ClassifyResult,
    EngineClient,
    ScoreRequest,
    ScoreTarget,
)
from promptserve.service.errors import InvalidRequestError, TooManyImagesError
from promptserve.service.settings import Settings

MAX_CLASSIFIERS = 16  # per request: each adds its scoring and, if not shared, an engine pass


@dataclass(frozen=True)
class ClassifyQuery:
    """One classify request, whatever shape it arrived in; images are still encoded (file
    bytes, or base64 text from a JSON body)."""

    images: list[bytes] | list[str]
    classifier: str | None = None  # None: the default classifier
    version: str | None = None  # None: the newest version
    top_k: int | None = None  # None: the configured default; "all" is len(labels)
    labels: list[str] | None = None  # None: all of the classifier's classes
    classifiers: list[str] | None = None  # several classifiers (then `classifier` is unused)


class ClassifyPipeline:
    def __init__(
        self, settings: Settings, catalog: Catalog, preparer: ImagePreparer, engine: EngineClient
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.preparer = preparer
        self.engine = engine

    async def __call__(self, query: ClassifyQuery) -> list[ClassifyResult]:
        """One result per classifier the query names (one, unless `query.classifiers`)."""
        check_image_count(len(query.images), self.settings.max_images_per_request)
        versions = await self._versions(query)
        check_same_input(versions)
        targets = [ScoreTarget(v.name, v.version, self._labels(v, query.labels)) for v in versions]
        first = versions[0]
        pixels = await self.preparer.pixels(query.images, first.transform, first.preprocess.size)
        top_k = query.top_k if query.top_k is not None else self.settings.default_top_k
        return await self.engine.score(ScoreRequest(targets, top_k), pixels)  # uint8 pixels

    async def _versions(self, query: ClassifyQuery) -> list[VersionInfo]:
        if query.classifiers is not None:
            names = check_classifier_names(query.classifiers, query.version)
            return [self.catalog.describe(name) for name in names]
        name = query.classifier or self.settings.default_classifier
        if name == self.settings.default_classifier:
            await self.engine.ready()  # 503 until the default is loaded and warm
        return [self.catalog.describe(name, query.version)]

    def _labels(self, version: VersionInfo, names: list[str] | None) -> LabelRequest | None:
        if names is None:
            return None
        s = self.settings
        return check_labels(
            version,
            names,
            max_labels=s.max_labels,
            max_new=s.max_new_labels,
            max_chars=s.max_label_chars,
        )


def check_image_count(count: int, limit: int) -> None:
    if count == 0:
        raise InvalidRequestError("no images: send at least one image")
    if count > limit:
        raise TooManyImagesError(f"{count} images in one request; at most {limit} allowed")


def check_classifier_names(names: Sequence[str], version: str | None) -> list[str]:
    """The distinct, safe names of a several-classifier request, in request order."""
    if version is not None:
        raise InvalidRequestError(
            "version applies to one classifier; a request naming several uses their newest"
        )
    if not names:
        raise InvalidRequestError("classifiers must name at least one classifier")
    if len(names) > MAX_CLASSIFIERS:
        raise InvalidRequestError(
            f"{len(names)} classifiers in one request; at most {MAX_CLASSIFIERS} allowed"
        )
    if len(set(names)) != len(names):
        raise InvalidRequestError("classifiers must be distinct")
    return [check_name(name) for name in names]


def check_same_input(versions: Sequence[VersionInfo]) -> None:
    """One decode serves every classifier only if they preprocess images alike."""
    first = versions[0]
    for other in versions[1:]:
        if other.preprocess != first.preprocess:
            raise InvalidRequestError(
                f"classifiers {first.name!r} and {other.name!r} take different image inputs "
                "(another backbone); classify with them in separate requests"
            )
