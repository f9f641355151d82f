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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from torch import Tensor

from promptserve.models.artifact import check_name
from promptserve.models.classifier import LabelRequest, check_labels
from promptserve.models.errors import UnknownVersionError
from promptserve.models.names import name_key
from promptserve.service.aliases import parse_ref
from promptserve.service.catalog import Catalog, Resolved, VersionInfo
from promptserve.service.classify.images import ImagePreparer
from promptserve.service.classify.scoring import (
    ClassifyResult,
    EmbedRequest,
    EngineClient,
    ScoreRequest,
    ScoreTarget,
)
from promptserve.service.errors import InvalidRequestError, TooManyImagesError, UnknownAliasError
from promptserve.service.settings import Settings
from promptserve.service.tracing import span

MAX_CLASSIFIERS = 16  # per request: each adds its scoring and, if not shared, an engine pass


@dataclass(frozen=True)
class ClassifyQuery:
    """One classify request, whatever shape it arrived in; images are still encoded (file
    bytes, or base64 text from a JSON body)."""

    images: list[bytes] | list[str]
    classifier: str | None = None  # name, name@alias, name@3; None: the default classifier
    version: str | None = None  # a version or an alias; None: the alias `latest`
    top_k: int | None = None  # None: the configured default; "all" is len(labels)
    labels: list[str] | None = None  # None: all of the classifier's classes
    classifiers: list[str] | None = None  # several classifiers (then `classifier` is unused)


class ClassifyPipeline:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        preparer: ImagePreparer,
        engine: EngineClient,
        on_classifier: Callable[[str | None], None] = lambda name: None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.preparer = preparer
        self.engine = engine
        self.on_classifier = on_classifier  # told each name looked up (None: not in the store)

    async def __call__(self, query: ClassifyQuery) -> list[ClassifyResult]:
        """One result per classifier the query names (one, unless `query.classifiers`)."""
        check_image_count(len(query.images), self.settings.max_images_per_request)
        resolved = await self._resolve(query)
        versions = [self.catalog.version_info(r.name, r.version) for r in resolved]
        check_same_input(versions)
        targets = [ScoreTarget(v.name, v.version, self._labels(v, query.labels)) for v in versions]
        first = versions[0]
        with span("decode", {"promptserve.images": len(query.images)}):
            pixels = await self.preparer.pixels(
                query.images, first.transform, first.preprocess.size
            )
        top_k = query.top_k if query.top_k is not None else self.settings.default_top_k
        results = await self.engine.score(ScoreRequest(targets, top_k), pixels)  # uint8 pixels
        return [replace(res, alias=r.alias) for res, r in zip(results, resolved, strict=True)]

    async def _resolve(self, query: ClassifyQuery) -> list[Resolved]:
        """The classifier versions the query names, in order."""
        if query.classifiers is not None:
            refs = check_classifier_names(query.classifiers, query.version)
            return [self._lookup(ref) for ref in refs]
        return [await self.resolve_one(query.classifier, query.version)]

    async def resolve_one(self, ref: str | None, version: str | None = None) -> Resolved:
        """One classifier reference (None: the default classifier), resolved; 503 while the
        default classifier is not ready."""
        ref = ref or self.settings.default_classifier
        if parse_ref(ref)[0] == self.settings.default_classifier:
            await self.engine.ready()  # 503 until the default is loaded and warm
        return self._lookup(ref, version)

    def _lookup(self, ref: str, version: str | None = None) -> Resolved:
        """`catalog.lookup`, telling `on_classifier` the name (a classifier the store does not
        hold is None, so a caller's invented names add no metric series)."""
        try:
            resolved = self.catalog.lookup(ref, version)
        except (UnknownVersionError, UnknownAliasError):
            self.on_classifier(parse_ref(ref)[0])  # a known name: its version or alias failed
            raise
        except Exception:
            self.on_classifier(None)
            raise
        self.on_classifier(resolved.name)
        return resolved

    async def embed(
        self,
        ref: str | None,
        *,
        images: list[bytes] | list[str] | None = None,
        texts: list[str] | None = None,
    ) -> tuple[Resolved, Tensor]:
        """The classifier's embeddings of `images` (the prompted visual embedding it scores)
        or of label `texts` (its own text path), L2-normalised [n, D], in input order. The
        same checks and limits as classify: image count, pixels, label count and length."""
        resolved = await self.resolve_one(ref)
        info = self.catalog.version_info(resolved.name, resolved.version)
        if images is not None:
            check_image_count(len(images), self.settings.max_images_per_request)
            with span("decode", {"promptserve.images": len(images)}):
                pixels = await self.preparer.pixels(images, info.transform, info.preprocess.size)
            request = EmbedRequest(resolved.name, resolved.version)
            return resolved, await self.engine.embed(request, pixels)
        if not texts:
            raise InvalidRequestError("no input: send at least one text")
        # texts that read as the same prompt (case, width, whitespace) are encoded once
        keys = [name_key(text) for text in texts]
        distinct = list({key: text.strip() for key, text in zip(keys, texts, strict=True)}.values())
        labels = self._labels(info, distinct)
        request = EmbedRequest(resolved.name, resolved.version, labels)
        rows = await self.engine.embed(request, None)  # [distinct, D]
        assert labels is not None
        index = {name_key(name): i for i, name in enumerate(labels.names)}
        return resolved, rows[[index[key] for key in keys]]

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
    """The distinct, safe references (name, name@alias, name@3) of a several-classifier
    request, in request order."""
    if version is not None:
        raise InvalidRequestError(
            "version applies to one classifier; name each version as name@version instead"
        )
    if not names:
        raise InvalidRequestError("classifiers must name at least one classifier")
    if len(names) > MAX_CLASSIFIERS:
        raise InvalidRequestError(
            f"{len(names)} classifiers in one request; at most {MAX_CLASSIFIERS} allowed"
        )
    if len(set(names)) != len(names):
        raise InvalidRequestError("classifiers must be distinct")
    for name in names:
        check_name(parse_ref(name)[0])
    return list(names)


def check_same_input(versions: Sequence[VersionInfo]) -> None:
    """One decode serves every classifier only if they preprocess images alike."""
    first = versions[0]
    for other in versions[1:]:
        if other.preprocess != first.preprocess:
            raise InvalidRequestError(
                f"classifiers {first.name!r} and {other.name!r} take different image inputs "
                "(another backbone); classify with them in separate requests"
            )
