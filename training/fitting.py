"""Fit one method on one image source, and score a learner on labelled images: the steps that
`training.api` (one method) and `training.auto` (several, to choose among) share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from promptserve.models.backbone import Backbone, load_backbone
from promptserve.models.methods import Learner, create_method
from promptserve.models.preprocess import eval_transform, train_transform
from promptserve.training.data import ImageDataset, ImageSource, make_loader
from promptserve.training.errors import DataError
from promptserve.training.loop import FitOptions, FitResult, Progress, evaluate, fit
from promptserve.training.recipe import config_for
from promptserve.training.request import TrainRequest

EVAL_BATCH = 64


@dataclass
class FittedLearner:
    learner: Learner
    class_names: list[str]
    result: FitResult
    images: int  # training images seen per epoch
    train: ImageSource  # the images trained on
    heldout: ImageSource | None = None  # images of the same classes left out of training
    backbone: Backbone | None = None  # the frozen backbone under the learner
    auto: dict[str, Any] | None = None  # method=auto: how this method was chosen (training.auto)


def fit_source(
    request: TrainRequest,
    source: ImageSource,
    heldout: ImageSource | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FittedLearner:
    """Build `request`'s method on its backbone and fit it on every image of `source`."""
    class_names = list(source.class_names)
    if len(class_names) < 2:
        raise DataError(f"need at least 2 classes to train a classifier, found {class_names}")
    config = config_for(request, source)

    backbone = load_backbone(request.backbone, device=request.device)
    torch.manual_seed(request.seed)
    learner = create_method(request.method, backbone, config).to(request.device)
    transform = train_transform(backbone.preprocess, scale=config.crop_scale)
    dataset = ImageDataset(source, transform, class_names)
    loader = make_loader(
        dataset,
        config.batch_size,
        shuffle=True,
        seed=request.seed,
        num_workers=request.workers,
        drop_last=config.drop_last,
    )
    learner.prepare_training(class_names, loader)
    options = FitOptions(
        device=request.device, seed=request.seed, progress=progress, should_stop=should_stop
    )
    result = fit(learner, loader, class_names, options)
    return FittedLearner(learner, class_names, result, len(dataset), source, heldout, backbone)


def accuracy_on(
    learner: Learner, source: ImageSource, class_names: list[str], device: str = "cpu"
) -> float:
    """Top-1 accuracy (percent, two decimals) of `learner` on `source` against `class_names`,
    with the backbone's evaluation transform."""
    dataset = ImageDataset(source, eval_transform(learner.preprocess), class_names)
    loader = make_loader(dataset, EVAL_BATCH, shuffle=False, seed=0)
    return round(evaluate(learner, loader, class_names, device), 2)
