"""Public entry points: train a classifier into a store, evaluate a stored one.

The CLI and the service's job worker both call `train_classifier`, so a job and a command
line run do exactly the same thing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from promptserve.models.artifact import publish_classifier
from promptserve.models.methods import create_method
from promptserve.training.auto import AUTO, check_method, choose_method, is_auto, needs_training
from promptserve.training.data import ImageSource, from_memory, open_dataset, sample_few_shot
from promptserve.training.errors import DataError, TrainingCancelled, paths_in
from promptserve.training.fitting import FittedLearner, accuracy_on, fit_source
from promptserve.training.loop import Progress
from promptserve.training.recipe import config_for, default_preset, recipe_of, template_of
from promptserve.training.request import TrainRequest
from promptserve.training.stored_eval import EvalResult, evaluate_classifier
from promptserve.training.synthetic.tasks import color_shape_classes

__all__ = [
    "AUTO",
    "DatasetSummary",
    "EvalResult",
    "ImageSource",
    "config_for",
    "default_preset",
    "from_memory",
    "TrainRequest",
    "check_method",
    "evaluate_classifier",
    "fit_learner",
    "open_within",
    "summarize_dataset",
    "train_classifier",
    "world_class_names",
]

log = logging.getLogger(__name__)

# A hook around each stage of a run, given its name (load_data, train, score, export): the
# service's job process opens a trace span per stage with it
Phase = Callable[[str], AbstractContextManager[object]]
HELDOUT_PER_CLASS = 50  # held-out images scored per class, at most (a sample, seeded)


@dataclass(frozen=True)
class TrainOutcome:
    artifact: Path
    version: str
    summary: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)  # accuracies (see score_fitted)


def fit_learner(
    request: TrainRequest,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    source: ImageSource | None = None,
    phase: Phase = nullcontext,
) -> FittedLearner:
    """Load data (or use `source`) and the backbone, build the method and fit it; for method
    auto, the method `training.auto.choose_method` picks, with its leaderboard."""
    with phase("load_data"):
        source, heldout = _training_images(request, source)
    with phase("train"):
        board = None
        if is_auto(request.method):  # the winner on validation folds of `source`, trained on all
            request, board = choose_method(request, source, should_stop)
        fitted = fit_source(request, source, heldout, progress, should_stop)
        fitted.auto = board
        return fitted


def _training_images(
    request: TrainRequest, source: ImageSource | None
) -> tuple[ImageSource, ImageSource | None]:
    """The few-shot sample to train on and the images left out of it (when asked for)."""
    if source is None:
        source = open_within(request.data, request.within, split="train")
    heldout = None
    if request.shots is not None and needs_training(request.method):
        sampled = sample_few_shot(source, request.shots, request.seed)
        if request.heldout:
            heldout = _left_out(source, sampled, request.seed)
        source = sampled
    return source, heldout


def _left_out(source: ImageSource, sampled: ImageSource, seed: int) -> ImageSource | None:
    """The images of `source` not in `sampled`, at most HELDOUT_PER_CLASS per class."""
    chosen = {item.key for item in sampled.items}
    # our own sample, not Dassl's: no image is repeated when a class has fewer than asked for
    rest = replace(
        source, items=[item for item in source.items if item.key not in chosen], dassl_order=False
    )
    if not rest.items:
        return None
    return sample_few_shot(rest, HELDOUT_PER_CLASS, seed, quiet=True)


def score_fitted(fitted: FittedLearner, device: str = "cpu") -> dict[str, Any]:
    """Top-1 accuracy (percent) of the tuned learner on its training images and, when there
    are held-out images, on those next to the zero-shot classifier of the same backbone."""
    learner, names = fitted.learner, fitted.class_names
    metrics: dict[str, Any] = {"train_accuracy": accuracy_on(learner, fitted.train, names, device)}
    if fitted.heldout is not None and fitted.backbone is not None:
        zeroshot = create_method("zeroshot", fitted.backbone).to(device)
        metrics |= {
            "heldout_images": len(fitted.heldout),
            "heldout_accuracy": accuracy_on(learner, fitted.heldout, names, device),
            "heldout_zeroshot_accuracy": accuracy_on(zeroshot, fitted.heldout, names, device),
        }
    return metrics


def train_classifier(
    request: TrainRequest,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    gate: Callable[[FittedLearner, dict[str, Any]], dict[str, Any]] | None = None,
    phase: Phase = nullcontext,
) -> TrainOutcome:
    """Fit the method on the request's data, score it, then export and publish a version.

    `should_stop` is also asked between the stages after training, so a cancelled run never
    publishes (once the export has begun, the version is published). `gate` (the service's
    gated publishing) is given the fitted learner and its metrics before the export; what it
    returns is recorded as the manifest's ``training.publish`` (and in the outcome's summary).
    `phase` is entered around each stage (`Phase`).
    """
    fitted = fit_learner(request, progress, should_stop, phase=phase)
    _check_stop(should_stop, "after training")
    with phase("score"):
        metrics = score_fitted(fitted, request.device)
        publish = gate(fitted, metrics) if gate is not None else None
    _check_stop(should_stop, "before export")
    result = fitted.result
    summary = {
        "data": request.data,
        "shots": request.shots,
        "seed": request.seed,
        "images": fitted.images,
        "epochs": result.epochs,
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
        "final_loss": result.final_loss,
        "epoch_losses": [round(x, 5) for x in result.losses],
        "feature_cache": result.feature_cache,  # None: a fresh augmentation every epoch
        "recipe": recipe_of(fitted.learner.config),
        "template": template_of(fitted.learner.config),
        **fitted.learner.describe(),
    }
    if fitted.auto is not None:
        summary["auto"] = fitted.auto  # the leaderboard method=auto chose by
    if publish is not None:
        summary["publish"] = publish
    with phase("export"):
        artifact = publish_classifier(
            fitted.learner.cpu(),
            fitted.class_names,
            request.store,
            request.name,
            training=summary,
            metrics=metrics,
        )
    log.info("published %s", artifact)
    return TrainOutcome(artifact=artifact, version=artifact.name, summary=summary, metrics=metrics)


def _check_stop(should_stop: Callable[[], bool] | None, when: str) -> None:
    if should_stop is not None and should_stop():
        raise TrainingCancelled(f"cancelled {when}")


@dataclass(frozen=True)
class DatasetSummary:
    class_names: list[str]
    images: int


def summarize_dataset(
    data: str, split: str = "train", *, within: str | None = None
) -> DatasetSummary:
    """The classes and image count of a dataset spec, without loading any image.

    Raises:
        DataError: the spec cannot be opened (its message may name server paths), or, with
            `within`, it reaches a file outside that folder (see `open_within`).
    """
    source = open_within(data, within, split=split)
    return DatasetSummary(list(source.class_names), len(source))


def open_within(data: str, within: str | None, *, split: str = "train") -> ImageSource:
    """`open_dataset(data)`, and with `within`, refuse any dataset that reaches outside it.

    Every file the dataset names or reaches (manifest entries, class folders that are symlinks,
    split files pointing elsewhere) must resolve, symlinks followed, under `within`. The error
    for a dataset that escapes is the same whether the outside files exist or not, and names
    none of them: a failure to open that mentions an outside path is reported the same way.
    """
    if within is None:
        return open_dataset(data, split=split)
    root = Path(within).resolve()
    escaped = DataError(f"dataset {_shown(data, root)} names files outside the data root")
    try:
        source = open_dataset(data, split=split)
    except DataError as exc:
        if any(not _inside(Path(p), root) for p in paths_in(str(exc))):
            raise escaped from None
        raise
    for item in source.items:
        if item.path is not None and not _inside(item.path, root):
            raise escaped
    return source


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a symlink loop or a name the OS refuses: not trusted
        return False


def _shown(data: str, root: Path) -> str:
    return repr(data.replace(str(root), "<data root>"))


def world_class_names() -> list[str]:
    """The synthetic world's 64 colour-shape class names (the default classifier's classes)."""
    return color_shape_classes()
