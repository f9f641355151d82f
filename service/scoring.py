"""From image embeddings to ranked labels: resolve the label set, score, rank.

The exported graph stops at embeddings, so a label subset is only a row selection of the class
matrix: ``s * emb @ classes[subset]^T``, softmax over the subset. `check_labels` validates the
requested names and says which the classifier lacks (those are encoded by `service.classify.labels`);
`resolve_labels` turns the names into the [L, D] matrix scored against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from models.classifier import Classifier
from service.errors import InvalidLabelError, UnknownLabelError

SHOWN_UNKNOWN = 5  # unknown labels named in an error message


@dataclass(frozen=True)
class LabelSet:
    names: list[str]
    embeddings: Tensor  # [L, D] L2-normalised, on the classifier's device
    encoded: list[str] = field(default_factory=list)  # names encoded on the fly (not stored)


@dataclass(frozen=True)
class LabelRequest:
    """Checked label names: which the classifier has, and which must be encoded."""

    names: list[str]
    new: list[str]  # names the classifier lacks, in request order


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float  # softmax probability over the label set


def check_labels(
    classifier: Classifier, labels: Sequence[str], max_labels: int, max_new: int
) -> LabelRequest:
    """Validate requested names and split them into stored and new ones.

    Raises InvalidLabelError (422) for an empty list or name, a duplicate, too many labels or
    too many new ones; UnknownLabelError (422) for a new name when `max_new` is 0 (open
    vocabulary switched off).
    """
    names = [label.strip() for label in labels]
    if not names or not all(names):
        raise InvalidLabelError("labels must be a non-empty list of non-empty class names")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidLabelError(f"duplicate label(s) {', '.join(map(repr, duplicates[:5]))}")
    if len(names) > max_labels:
        raise InvalidLabelError(f"{len(names)} labels requested; at most {max_labels} allowed")
    known = set(classifier.class_names)
    new = [name for name in names if name not in known]
    if new and max_new == 0:
        shown = ", ".join(repr(u) for u in new[:SHOWN_UNKNOWN])
        more = f" and {len(new) - SHOWN_UNKNOWN} more" if len(new) > SHOWN_UNKNOWN else ""
        raise UnknownLabelError(
            f"classifier {classifier.name!r} version {classifier.version} has no class {shown}"
            f"{more}; labels must be among its classes (GET /classifiers/{classifier.name})"
        )
    if len(new) > max_new:
        raise InvalidLabelError(
            f"{len(new)} labels are not among the classifier's classes; at most {max_new} new "
            "labels are encoded per request"
        )
    return LabelRequest(names, new)


def resolve_labels(
    classifier: Classifier, request: LabelRequest | None, encoded: Tensor | None = None
) -> LabelSet:
    """The label set to score against: all classes when `request` is None, else its names,
    with stored rows for known classes and `encoded` ([N, D], in `request.new` order) for new."""
    if request is None:
        return LabelSet(list(classifier.class_names), classifier.class_embeddings)
    index = {name: i for i, name in enumerate(classifier.class_names)}
    device = classifier.class_embeddings.device
    new_row = {name: i for i, name in enumerate(request.new)}
    if request.new:
        assert encoded is not None
        assert encoded.shape[0] == len(request.new)
        table = torch.cat([classifier.class_embeddings, encoded.to(device)])  # [C + N, D]
    else:
        table = classifier.class_embeddings
    offset = len(classifier.class_names)
    rows = [index[n] if n in index else offset + new_row[n] for n in request.names]
    embeddings = table.index_select(0, torch.tensor(rows, device=device))  # [L, D]
    return LabelSet(list(request.names), embeddings, list(request.new))


def rank(
    classifier: Classifier, embeddings: Tensor, labels: LabelSet, top_k: int
) -> list[list[Prediction]]:
    """[B, D] image embeddings -> per image the `top_k` most probable labels, best first."""
    logits = classifier.logits(embeddings.to(labels.embeddings.device), labels.embeddings)
    probs = F.softmax(logits.float(), dim=-1)  # [B, L]
    values, indices = probs.topk(min(top_k, len(labels.names)), dim=-1)
    return [
        [
            Prediction(labels.names[i], float(p))
            for p, i in zip(row_p.tolist(), row_i.tolist(), strict=True)
        ]
        for row_p, row_i in zip(values.cpu(), indices.cpu(), strict=True)
    ]
