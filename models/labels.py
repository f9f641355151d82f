"""Open-vocabulary labels: encoding names a classifier was not trained on.

A new label goes through the classifier's own learned text path (its method's
`encode_classes` with the learner weights stored in the artifact), so a CoOp classifier scores
"teal kite" with its learned context, not with a hand-written prompt. The backbone (the text
tower is most of its weight) is loaded once per spec and shared by every classifier on it; a
learner per classifier version only adds the method's few parameters. Encoded labels are kept in
a bounded LRU keyed by (classifier, version, label), and a name is checked against a token
limit before it is encoded. `Classifier.label_set`, the CLI and the service all encode through
a `LabelEncoder`; everything here blocks (the service runs it on its own thread).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from promptserve.models.backbone import Backbone, load_backbone
from promptserve.models.errors import ArtifactError, InvalidLabelError
from promptserve.models.export import LEARNER_FILE
from promptserve.models.integrity import verify_artifact
from promptserve.models.methods import Learner, create_method

if TYPE_CHECKING:
    from promptserve.models.classifier import Classifier

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

    def learner(self, classifier: Classifier) -> Learner:
        """The eager learner of `classifier`'s artifact, on the encoder's shared backbone."""
        with self._lock:
            return self._learner(classifier)

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


@functools.cache
def shared_label_encoder(device: str) -> LabelEncoder:
    """The process's encoder for classifiers on `device` outside the service (the Python API,
    the CLI): classifiers on one backbone share its text tower."""
    return LabelEncoder(device=device)


def load_learner(path: Path, *, device: str = "cpu", backbone: Backbone | None = None) -> Learner:
    """Rebuild the eager learner of the artifact at `path` (re-encode classes, resume training).

    `backbone` (loaded from the manifest's spec when None) may be shared by many learners: the
    towers are frozen and a learner only wraps them.

    Raises:
        ArtifactError: the files fail verification, or the backbone loaded now is not the one the
            artifact was built on (its weights hash differs).
    """
    path = Path(path)
    manifest = verify_artifact(path)
    recorded = manifest["backbone"]
    if backbone is None:
        backbone = load_backbone(recorded["spec"], device=device)
    if backbone.id.weights_sha256 != recorded["weights_sha256"]:
        raise ArtifactError(
            f"backbone {recorded['spec']!r} now has weights {backbone.id.weights_sha256[:12]}, "
            f"but {path} was built on {recorded['weights_sha256'][:12]}"
        )
    learner = create_method(manifest["method"], backbone, manifest["config"]).to(device)
    learner.load_learned_state_dict(load_file(str(path / LEARNER_FILE), device=str(device)))
    return learner.eval()


def encode_labels(learner: Learner, names: list[str]) -> Tensor:
    """[N] names -> [N, D] normalised embeddings from `learner`'s text path, in eval mode."""
    was_training = learner.training
    learner.eval()
    try:
        with torch.inference_mode():
            return learner.encode_classes(list(names)).float()
    finally:
        learner.train(was_training)


def label_token_count(tokenizer: Any, name: str) -> int:
    """Tokens `name` takes in a prompt (without start/end tokens)."""
    encode = getattr(tokenizer, "encode", None)
    if callable(encode):
        return len(encode(name))
    ids = tokenizer([name])[0]  # [T], padded with 0 after the end token
    return int((ids != 0).sum()) - 2


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
