"""Labels a request names, resolved for scoring: `models.labels.LabelEncoder` on its own thread.

Encoding is CPU/GPU-bound and blocks; the service runs it on one thread of its own, so it never
waits behind, or holds up, decoding or the engine. The encoder (shared backbones, an LRU of
encoded labels, the token check) is the one the Python API and the CLI use.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from torch import Tensor

from promptserve.models.classifier import Classifier, LabelRequest, LabelSet, resolve_labels
from promptserve.models.labels import LabelEncoder
from promptserve.service.logs import run_in
from promptserve.service.tracing import span


class AsyncLabelEncoder(LabelEncoder):
    """A `LabelEncoder` whose encoding runs off the event loop."""

    def __init__(
        self, *, device: str = "cpu", max_cached_labels: int = 10_000, max_learners: int = 8
    ) -> None:
        super().__init__(
            device=device, max_cached_labels=max_cached_labels, max_learners=max_learners
        )
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="labels")

    async def encode_async(
        self, classifier: Classifier, names: list[str], max_tokens: int | None = None
    ) -> Tensor:
        """`encode` on the encoder's own thread."""
        return await run_in(self._pool, self.encode, classifier, names, max_tokens)

    async def resolve(
        self, classifier: Classifier, request: LabelRequest | None, max_tokens: int | None
    ) -> LabelSet:
        """The label set of a checked request (all classes when None); names the classifier
        lacks are encoded in one batch (cached ones come from the LRU)."""
        if request is None or not request.new:
            return resolve_labels(classifier, request)
        with span("encode_labels", {"promptserve.labels.new": len(request.new)}):
            encoded = await self.encode_async(classifier, request.new, max_tokens)  # [N, D]
        return resolve_labels(classifier, request, encoded)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
