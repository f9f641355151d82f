"""Checks for a request that names several classifiers (``classifiers=a,b,c``)."""

from __future__ import annotations

from collections.abc import Sequence

from promptserve.models.artifact import check_name
from promptserve.models.classifier import Classifier
from promptserve.service.errors import InvalidRequestError

MAX_CLASSIFIERS = 16  # per request: each adds its scoring and, if not shared, an engine pass


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


def check_same_input(classifiers: Sequence[Classifier]) -> None:
    """One decode serves every classifier only if they preprocess images alike."""
    first = classifiers[0]
    for other in classifiers[1:]:
        if other.preprocess != first.preprocess:
            raise InvalidRequestError(
                f"classifiers {first.name!r} and {other.name!r} take different image inputs "
                "(another backbone); classify with them in separate requests"
            )
