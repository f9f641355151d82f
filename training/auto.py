"""``method=auto``: choose the method from the training images alone, then train it on them.

The training images (the few-shot sample, never a test split) are cut into stratified folds:
with at least `HOLDOUT_MIN_PER_CLASS` images in every class a quarter of each class is held out
once; with fewer, every fold takes its turn (k-fold cross-validation, k = min(`FOLDS`, the
fewest images of a class)). Each candidate of `CANDIDATES` (listed cheapest first, each with its
own config: the backbone's preset when it has one) trains on the rest and is scored on the held
out part. The cheapest candidate within one standard error of the best pooled validation
accuracy wins (`choose`: a costlier one must win by more than the validation set can tell); the
winner is then trained again on every training image and is what gets published. A candidate
that would start once `TrainRequest.auto_budget_s` has passed is skipped; zero-shot trains
nothing and always runs, so there is always a winner. The leaderboard (each candidate's
validation accuracy and seconds, or why it was skipped) comes back with the winner's request.

``auto`` is not a method of the registry: it learns nothing of its own. Overrides and presets
belong to one method's config, so a request for ``auto`` that names any is refused; ``epochs``
applies to every candidate that trains.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from promptserve.models.backbone import parse_backbone_spec
from promptserve.models.errors import ConfigError, UnknownMethodError
from promptserve.models.methods import get_method, list_methods, method_needs_training
from promptserve.models.methods.config import config_fields
from promptserve.training.data import ImageSource
from promptserve.training.errors import DataError
from promptserve.training.fitting import accuracy_on, fit_source
from promptserve.training.recipe import default_preset
from promptserve.training.request import TrainRequest

log = logging.getLogger(__name__)

AUTO = "auto"
FOLDS = 4  # a held-out quarter, or up to 4-fold cross-validation
HOLDOUT_MIN_PER_CLASS = 8  # with fewer images in some class, cross-validate


@dataclass(frozen=True)
class Candidate:
    """One method and config that auto tries."""

    label: str  # its name on the leaderboard
    method: str
    overrides: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # its recipe is the method's preset `<backbone architecture>_<variant>` (mini_csc) where
    # there is one, else the backbone's own preset (`recipe.default_preset`), as for a method
    variant: str | None = None


# cheapest first (within one standard error of the best, the earlier one wins). CPU seconds
# per epoch of 8 classes x 16 shots on `mini` (batch 16, second of two runs): provp 7.7,
# pmpo 9.1, sep 15.2, dcp 17.9, coop 4.6; their `mini` presets train 8 epochs (provp: 62 s,
# the cheapest visual-prompt method) against coop's 20 (92 s)
CANDIDATES: tuple[Candidate, ...] = (
    Candidate("zeroshot", "zeroshot"),
    Candidate("linear_probe", "linear_probe"),
    Candidate("provp", "provp"),
    Candidate("coop", "coop"),
    Candidate("coop_csc", "coop", MappingProxyType({"csc": True}), variant="csc"),
)


def is_auto(method: str) -> bool:
    return method == AUTO


def check_method(name: str) -> None:
    """`name` is ``auto`` or a registered method; anything else raises UnknownMethodError
    listing both, as `get_method` lists the methods."""
    if not is_auto(name) and name not in list_methods():
        raise UnknownMethodError(
            f"unknown method {name!r}; registered methods: {', '.join(list_methods())}; "
            f"or {AUTO} to choose one"
        )


def method_choices() -> list[str]:
    """What a request may name as its method: the registered methods and ``auto``."""
    return [*list_methods(), AUTO]


def needs_training(method: str) -> bool:
    """Whether a run of `method` trains (auto's candidates do), so it takes a few-shot sample."""
    return is_auto(method) or method_needs_training(method)


def check_request(request: TrainRequest) -> None:
    """Refuse what an auto request cannot mean: config overrides or a preset, which belong to
    one method, and a budget that is not a positive number of seconds."""
    if request.overrides:
        fields = ", ".join(sorted(request.overrides))
        raise ConfigError(
            f"method auto takes no config overrides ({fields}): each candidate trains with its "
            "own config; name one method to set its fields"
        )
    if request.preset is not None:
        raise ConfigError(
            f"method auto takes no preset ({request.preset!r}): each candidate uses its own"
        )
    if not request.auto_budget_s > 0:
        raise ConfigError(f"auto_budget_s must be a positive number, got {request.auto_budget_s}")


def unavailable(candidate: Candidate) -> str | None:
    """Why `candidate` cannot run here (its method or a config field is missing), or None."""
    if candidate.method not in list_methods():
        return f"method {candidate.method!r} is not registered"
    known = config_fields(get_method(candidate.method).config_cls)
    missing = sorted(set(candidate.overrides) - set(known))
    if missing:
        return f"{candidate.method} has no config field {', '.join(missing)}"
    return None


def candidate_requests(request: TrainRequest) -> list[tuple[Candidate, TrainRequest]]:
    """The request of every available candidate: its method and overrides, its own preset."""
    check_request(request)
    return [
        (
            c,
            replace(
                request, method=c.method, overrides=dict(c.overrides), preset=_preset(c, request)
            ),
        )
        for c in CANDIDATES
        if unavailable(c) is None
    ]


def _preset(candidate: Candidate, request: TrainRequest) -> str | None:
    presets = get_method(candidate.method).presets
    variant = f"{parse_backbone_spec(request.backbone)[0]}_{candidate.variant}"
    if candidate.variant is not None and variant in presets:
        return variant
    return default_preset(candidate.method, request.backbone)


def fold_count(per_class: Iterable[int]) -> int:
    """How many folds `per_class` images per class allow (1: one held-out quarter)."""
    counts = list(per_class)
    fewest = min(counts, default=0)
    if fewest < 2:
        raise DataError(
            f"method auto needs at least 2 training images in every class to validate on, "
            f"one class has {fewest}"
        )
    return 1 if fewest >= HOLDOUT_MIN_PER_CLASS else min(FOLDS, fewest)


def validation_folds(source: ImageSource, seed: int) -> list[tuple[ImageSource, ImageSource]]:
    """(train, validation) pairs from `source`, stratified: every class in every part."""
    groups = source.by_class()
    used = fold_count(len(items) for items in groups.values())
    parts = FOLDS if used == 1 else used
    rng = random.Random(seed)
    fold_of: dict[str, int] = {}
    for items in groups.values():
        order = list(items)
        rng.shuffle(order)
        fold_of |= {item.key: i % parts for i, item in enumerate(order)}
    return [
        (
            replace(source, items=[it for it in source.items if fold_of[it.key] != f]),
            replace(source, items=[it for it in source.items if fold_of[it.key] == f]),
        )
        for f in range(used)
    ]


def choose_method(
    request: TrainRequest, source: ImageSource, should_stop: Callable[[], bool] | None = None
) -> tuple[TrainRequest, dict[str, Any]]:
    """Score the candidates on validation folds of `source`: the winner's request (to be
    trained on all of `source`) and the leaderboard."""
    requests = {c.label: r for c, r in candidate_requests(request)}
    folds = validation_folds(source, request.seed)
    started = time.monotonic()
    board: list[dict[str, Any]] = []
    for candidate in CANDIDATES:
        entry: dict[str, Any] = {"label": candidate.label, "method": candidate.method}
        entry["overrides"] = dict(candidate.overrides)
        elapsed = time.monotonic() - started
        reason = unavailable(candidate)
        if reason is None and elapsed >= request.auto_budget_s and needs_training(candidate.method):
            reason = f"budget: {elapsed:.0f} s of {request.auto_budget_s:g} s spent before it"
        if reason is None:
            entry["preset"] = requests[candidate.label].preset
            entry |= _validate(requests[candidate.label], folds, should_stop)
            log.info("auto: %s validation accuracy %.2f", candidate.label, entry["val_accuracy"])
        else:
            entry["skipped"] = reason
        board.append(entry)
    images = sum(len(val) for _, val in folds)
    winner, why = choose(board, images)
    leaderboard = {
        "winner": winner["label"],
        "reason": why,
        "validation": {
            "folds": len(folds),
            "images": images,
            "scheme": "holdout" if len(folds) == 1 else f"{len(folds)}-fold",
        },
        "budget_s": request.auto_budget_s,
        "seconds": round(time.monotonic() - started, 2),  # the search, not the final training
        "candidates": board,
    }
    return requests[winner["label"]], leaderboard


def _validate(
    request: TrainRequest,
    folds: list[tuple[ImageSource, ImageSource]],
    should_stop: Callable[[], bool] | None,
) -> dict[str, Any]:
    """Pooled accuracy over the folds' validation images, and the seconds it took."""
    started = time.monotonic()
    correct = seen = 0.0
    for train, val in folds:
        fitted = fit_source(request, train, should_stop=should_stop)
        accuracy = accuracy_on(fitted.learner, val, fitted.class_names, request.device)
        correct += accuracy * len(val)
        seen += len(val)
    return {
        "val_accuracy": round(correct / seen, 2),
        "seconds": round(time.monotonic() - started, 2),
    }


def choose(board: list[dict[str, Any]], images: int) -> tuple[dict[str, Any], str]:
    """The cheapest entry within one standard error of the best validation accuracy over
    `images` validation images, and why.

    A few dozen validation images measure accuracy to a couple of points, so a costlier
    candidate that wins by an image or two is not shown to be better: the earliest (cheapest)
    candidate within one standard error of the best wins (the one-standard-error rule of
    Breiman et al.'s CART). The error is the binomial one of the best accuracy, with two images
    right and two wrong added (Agresti and Coull's adjustment: a perfect score still has one).
    """
    ran = [entry for entry in board if "val_accuracy" in entry]
    assert ran, "zeroshot always runs"
    best_entry = max(ran, key=lambda entry: entry["val_accuracy"])  # the first of a tie
    best = best_entry["val_accuracy"]
    p = (best / 100 * images + 2) / (images + 4)
    error = 100 * math.sqrt(p * (1 - p) / max(images, 1))
    winner = next(entry for entry in ran if entry["val_accuracy"] >= best - error)
    tied = [entry for entry in ran if entry["val_accuracy"] == best and entry is not winner]
    if winner["val_accuracy"] == best:
        why = f"best validation accuracy ({best:.2f} %)"
        if tied:
            why += ", tied with " + ", ".join(e["label"] for e in tied) + ": the cheaper"
        return winner, why
    return winner, (
        f"validation accuracy {winner['val_accuracy']:.2f} %, within one standard error "
        f"({error:.2f} points over {images} images) of the best, {best_entry['label']} at "
        f"{best:.2f} %: the cheaper"
    )
