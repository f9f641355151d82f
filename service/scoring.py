"""From image embeddings to ranked labels: resolve the label set, score, rank.

The exported graph stops at embeddings, so a label subset is only a row selection of the class
matrix: ``s * emb @ classes[subset]^T``, softmax over the subset. `resolve_labels` is the one
place that turns requested label names into class embeddings; open-vocabulary labels (encoding
names the classifier was not trained on) will plug in there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from models.classifier import Classifier
from service.errors import InvalidRequestError, UnknownLabelError

SHOWN_UNKNOWN = 5  # unknown labels named in an error message


@dataclass(frozen=True)
class LabelSet:
    names: list[str]
    embeddings: Tensor  # [L, D] L2-normalised, on the classifier's device


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float  # softmax probability over the label set


def resolve_labels(
    classifier: Classifier, labels: Sequence[str] | None, max_labels: int
) -> LabelSet:
    """The label set to score against: all classes when `labels` is None, else the subset.

    Duplicates are dropped (first occurrence kept). Raises UnknownLabelError (422) for a name that
    is not one of the classifier's classes, InvalidRequestError (422) for an empty or too long list.
    """
    if labels is None:
        return LabelSet(list(classifier.class_names), classifier.class_embeddings)
    names = list(dict.fromkeys(label.strip() for label in labels))
    if not names or not all(names):
        raise InvalidRequestError("labels must be a non-empty list of non-empty class names")
    if len(names) > max_labels:
        raise InvalidRequestError(f"{len(names)} labels requested; at most {max_labels} allowed")
    index = {name: i for i, name in enumerate(classifier.class_names)}
    unknown = [name for name in names if name not in index]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:SHOWN_UNKNOWN])
        more = f" and {len(unknown) - SHOWN_UNKNOWN} more" if len(unknown) > SHOWN_UNKNOWN else ""
        raise UnknownLabelError(
            f"classifier {classifier.name!r} version {classifier.version} has no class {shown}"
            f"{more}; labels must be among its classes (GET /classifiers/{classifier.name})"
        )
    rows = torch.tensor([index[name] for name in names], device=classifier.class_embeddings.device)
    return LabelSet(names, classifier.class_embeddings.index_select(0, rows))


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
