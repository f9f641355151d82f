"""Open-vocabulary labels: encoding names a classifier was not trained on, at request time.

A new label goes through the classifier's own learned text path (its method's
`encode_classes` with the learner weights stored in the artifact), so a CoOp classifier scores
"teal kite" with its learned context, not with a hand-written prompt. The backbone (the text
tower is most of its weight) is loaded once per spec and shared by every classifier on it; a
learner per classifier version only adds the method's few parameters. Encoded labels are kept in
a bounded LRU keyed by (classifier, version, label). Everything here blocks: the pipeline calls
`encode` in a thread, and one lock serialises encoding, as it is CPU/GPU-bound anyway.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from promptserve.models.backbone import Backbone, load_backbone
from promptserve.models.classifier import Classifier, encode_labels, label_token_count, load_learner
from promptserve.models.errors import ArtifactError, InvalidLabelError
from promptserve.models.methods import Learner

log = logging.getLogger(__name__)

LabelKey = tuple[str, str, str]  # (classifier, version, label)
TOKENIZER_CACHE_WORDS = 20_000  # words whose BPE split open_clip's tokenizer may remember


class LabelEncoder:
    """Encodes labels a classifier lacks; caches backbones, learners and embeddings."""

    def __init__(
        self, *, device: str = "cpu", max_cached_labels: int = 10_000, max_learners: int = 8
    ) -> None:
        self.device = device
        self.max_cached_labels = max_cached_labels
        self.max_learners = max_learners
        self.encode_calls = 0  # encode_classes calls made (one per request with new labels)
        self._backbones: dict[str, Backbone] = {}  # by spec
        # by (classifier, version); the Classifier object tells a republished version apart
        self._learners: OrderedDict[tuple[str, str], tuple[Classifier, Learner]] = OrderedDict()
        self._labels: OrderedDict[LabelKey, Tensor] = OrderedDict()  # [D] on the CPU
        self._lock = threading.Lock()
        # its own thread: encoding labels never waits behind, or holds up, other blocking work
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="labels")

    async def encode_async(
        self, classifier: Classifier, names: list[str], max_tokens: int | None = None
    ) -> Tensor:
        """`encode` on the encoder's own thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.encode, classifier, names, max_tokens)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def encode(
        self, classifier: Classifier, names: list[str], max_tokens: int | None = None
    ) -> Tensor:
        """[N] names the classifier lacks -> [N, D] normalised, on the classifier's device.

        Cached names are served from the LRU; the others are checked against `max_tokens`
        (InvalidLabelError) and encoded in one batch.
        """
        with self._lock:
            learner = self._learner(classifier)
            keys = [(classifier.name, classifier.version, name) for name in names]
            missing = [key[2] for key in keys if key not in self._labels]
            if missing and max_tokens is not None:
                check_token_counts(learner, missing, max_tokens)
            if missing:
                self.encode_calls += 1
                for name, row in zip(missing, encode_labels(learner, missing).cpu(), strict=True):
                    self._labels[(classifier.name, classifier.version, name)] = row
            rows = []
            for key in keys:
                self._labels.move_to_end(key)
                rows.append(self._labels[key])
            while len(self._labels) > self.max_cached_labels:
                self._labels.popitem(last=False)
        return torch.stack(rows).to(classifier.device)  # [N, D]

    def cached_labels(self) -> int:
        with self._lock:
            return len(self._labels)

    def _learner(self, classifier: Classifier) -> Learner:
        key = (classifier.name, classifier.version)
        entry = self._learners.get(key)
        if entry is not None and entry[0] is classifier:
            self._learners.move_to_end(key)
            return entry[1]
        if entry is not None:  # the version was deleted and published again: drop its labels
            for label_key in [k for k in self._labels if k[:2] == key]:
                del self._labels[label_key]
        if classifier.path is None:
            raise ArtifactError(f"{key[0]} version {key[1]} has no artifact path to load from")
        spec = classifier.manifest["backbone"]["spec"]
        if spec not in self._backbones:
            log.info("loading backbone %s for open-vocabulary labels", spec)
            self._backbones[spec] = load_backbone(spec, device=self.device)
            bound_tokenizer_cache(self._backbones[spec].tokenizer, TOKENIZER_CACHE_WORDS)
        learner = load_learner(classifier.path, device=self.device, backbone=self._backbones[spec])
        log.info("loaded the text path of %s version %s", *key)
        self._learners[key] = (classifier, learner)
        while len(self._learners) > self.max_learners:
            self._learners.popitem(last=False)
        return learner


def check_token_counts(learner: Learner, names: list[str], max_tokens: int) -> None:
    """InvalidLabelError for a name longer than `max_tokens` tokens of the learner's tokenizer."""
    for name in names:
        count = label_token_count(learner.tokenizer, name)
        if count > max_tokens:
            raise InvalidLabelError(
                f"label {name[:40]!r} is {count} tokens long; at most {max_tokens} allowed"
            )


class BoundedCache(dict[str, str]):
    """A dict that forgets its oldest entries past `max_entries`, keeping `pinned` ones.

    open_clip's BPE tokenizer remembers the split of every word it has seen, forever; labels
    from clients are unbounded, so the served tokenizers get this cache instead.
    """

    def __init__(self, entries: dict[str, str], max_entries: int) -> None:
        super().__init__(entries)
        self.pinned = frozenset(entries)
        self.max_entries = max_entries

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key, value)
        if len(self) > self.max_entries + len(self.pinned):
            for old in [k for k in self if k not in self.pinned][: len(self) // 4]:
                del self[old]


def bound_tokenizer_cache(tokenizer: object, max_entries: int) -> None:
    """Give a tokenizer with a word cache (open_clip's SimpleTokenizer) a bounded one."""
    cache = getattr(tokenizer, "cache", None)
    if isinstance(cache, dict) and not isinstance(cache, BoundedCache):
        tokenizer.cache = BoundedCache(cache, max_entries)  # type: ignore[attr-defined]
