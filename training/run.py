"""Public entry points: train a classifier into a store, evaluate a stored one.

The CLI and the service's job worker both call `train_classifier`, so a job and a command
line run do exactly the same thing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from models.artifact import export_classifier, resolve_version
from models.backbone import DEFAULT_BACKBONE, load_backbone
from models.classifier import load_classifier
from models.methods import Learner, create_method, make_config
from models.preprocess import eval_transform, train_transform
from training.data import ImageDataset, ImageSource, make_loader, open_dataset, sample_few_shot
from training.errors import DataError
from training.loop import FitOptions, FitResult, Progress, fit

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrainRequest:
    method: str
    data: str  # dataset spec (folder, manifest, split root, synthetic:...)
    store: Path
    name: str
    backbone: str = DEFAULT_BACKBONE
    shots: int | None = 16  # images per class; None uses every training image
    seed: int = 1
    epochs: int | None = None  # None keeps the method config's epochs
    overrides: dict[str, Any] = field(default_factory=dict)  # method config fields
    preset: str | None = None  # a named method preset, applied before overrides
    device: str = "cpu"


@dataclass(frozen=True)
class TrainOutcome:
    artifact: Path
    version: str
    summary: dict[str, Any]


@dataclass
class FittedLearner:
    learner: Learner
    class_names: list[str]
    result: FitResult
    images: int  # training images seen per epoch


def fit_learner(
    request: TrainRequest,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    source: ImageSource | None = None,
) -> FittedLearner:
    """Load data (or use `source`) and the backbone, build the method and fit it."""
    if source is None:
        source = open_dataset(request.data, split="train")
    if request.shots is not None and request.method != "zeroshot":
        source = sample_few_shot(source, request.shots, request.seed)
    class_names = list(source.class_names)
    if len(class_names) < 2:
        raise DataError(f"need at least 2 classes to train a classifier, found {class_names}")
    overrides = dict(request.overrides)
    if request.epochs is not None and request.method != "zeroshot":
        overrides["epochs"] = request.epochs
    config = make_config(request.method, overrides, preset=request.preset)

    backbone = load_backbone(request.backbone, device=request.device)
    torch.manual_seed(request.seed)
    learner = create_method(request.method, backbone, config).to(request.device)
    dataset = ImageDataset(source, train_transform(backbone.preprocess), class_names)
    loader = make_loader(dataset, config.batch_size, shuffle=True, seed=request.seed)
    learner.prepare_training(class_names, loader)
    options = FitOptions(
        device=request.device, seed=request.seed, progress=progress, should_stop=should_stop
    )
    result = fit(learner, loader, class_names, options)
    return FittedLearner(learner, class_names, result, len(dataset))


def train_classifier(
    request: TrainRequest,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainOutcome:
    """Fit the method on the request's data, then export and publish a classifier version."""
    fitted = fit_learner(request, progress, should_stop)
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
        **fitted.learner.describe(),
    }
    artifact = export_classifier(
        fitted.learner.cpu(), fitted.class_names, request.store, request.name, training=summary
    )
    log.info("published %s", artifact)
    return TrainOutcome(artifact=artifact, version=artifact.name, summary=summary)


@dataclass(frozen=True)
class EvalResult:
    accuracy: float  # top-1, percent
    images: int
    classes: list[str]
    classifier: str
    version: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_classifier(
    store: Path,
    name: str,
    data: str | ImageSource,
    *,
    version: str | None = None,
    engine: str = "onnx",
    batch_size: int = 64,
) -> EvalResult:
    """Top-1 accuracy of a stored classifier (its exported graph) on a labelled dataset."""
    path = resolve_version(store, name, version)
    classifier = load_classifier(path, engine=engine)  # type: ignore[arg-type]
    source = open_dataset(data, split="test") if isinstance(data, str) else data
    unknown = sorted(set(source.class_names) - set(classifier.class_names))
    if unknown:
        raise DataError(f"the data has classes the classifier does not know: {unknown[:10]}")
    dataset = ImageDataset(source, eval_transform(classifier.preprocess), classifier.class_names)
    correct = seen = 0
    for pixels, labels in make_loader(dataset, batch_size, shuffle=False, seed=0):
        logits = classifier.embed(pixels) @ classifier.class_embeddings.t()
        correct += int((logits.argmax(dim=-1) == labels).sum())
        seen += len(labels)
    return EvalResult(
        accuracy=100.0 * correct / max(1, seen),
        images=seen,
        classes=classifier.class_names,
        classifier=name,
        version=path.name,
    )
