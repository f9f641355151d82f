"""The seam between a request and the model: what an engine is asked, what it answers, and
the interface of the two engines behind it.

An API process checks a request (`service.classify.pipeline`) and prepares its pixels; an
engine scores them. The `LocalEngine` (`service.classify.engine`) runs the model in this
process; the `RemoteEngine` (`service.remote.worker`) sends the same request to the engine
process of ``serve --workers N``, which answers it with its own `LocalEngine`. Both take
uint8 pixels [n, 3, S, S] and normalise nowhere else than where the model runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from torch import Tensor

from promptserve.models.classifier import LabelRequest, Prediction


@dataclass(frozen=True)
class ScoreTarget:
    """One classifier version to score the images with, and the checked labels to use."""

    classifier: str
    version: str  # resolved: the engine scores exactly this version
    labels: LabelRequest | None = None  # None: all of the classifier's classes


@dataclass(frozen=True)
class ScoreRequest:
    """Images scored by one or several classifiers (that take the same input)."""

    targets: list[ScoreTarget]
    top_k: int


@dataclass(frozen=True)
class EmbedRequest:
    """Embeddings from one classifier version: of the images sent with it (`labels` None), or
    of the checked label texts `labels` through the classifier's own text path."""

    classifier: str
    version: str  # resolved
    labels: LabelRequest | None = None


@dataclass(frozen=True)
class ClassifyResult:
    classifier: str
    version: str
    predictions: list[list[Prediction]]  # per image, best first
    encoded_labels: list[str] = field(default_factory=list)  # labels encoded on the fly
    alias: str | None = None  # the alias the version was chosen by (None: named by number)


class EngineClient(Protocol):
    """What an API process asks of the engine, wherever it runs."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def ready(self) -> None:
        """Raise NotReadyError (503) unless the default classifier is loaded and warm."""

    def loaded(self) -> list[tuple[str, str]]:
        """The classifier versions loaded in the engine (as last known)."""

    async def score(self, request: ScoreRequest, pixels: Tensor) -> list[ClassifyResult]:
        """uint8 pixels [n, 3, S, S] -> one result per target, in request order."""

    async def embed(self, request: EmbedRequest, pixels: Tensor | None) -> Tensor:
        """uint8 pixels [n, 3, S, S] (or, with `request.labels`, None) -> the L2-normalised
        embeddings [n, D] the classifier scores with (float32, on the CPU): the prompted
        visual embedding of each image, or each label's row (stored or encoded)."""

    async def expose_metrics(self) -> str:
        """The Prometheus text of the whole service."""
