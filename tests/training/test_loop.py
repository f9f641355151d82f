"""The training loop: schedule, cancellation, and a real learning check."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from promptserve.models.backbone import Backbone
from promptserve.models.methods import create_method, make_config
from promptserve.models.preprocess import eval_transform
from promptserve.training.data import ImageDataset, make_loader, open_dataset
from promptserve.training.errors import TrainingCancelled
from promptserve.training.loop import (
    FitOptions,
    Progress,
    autocast_for,
    evaluate,
    fit,
    learning_rate,
)
from tests.helpers import make_image_folder

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (230, 210, 20),
}


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("colours"), COLOURS, per_class=8, seed=0)


def loader_for(folder: Path, backbone: Backbone, batch_size: int = 8):  # type: ignore[no-untyped-def]
    source = open_dataset(str(folder))
    dataset = ImageDataset(source, eval_transform(backbone.preprocess), list(source.class_names))
    return make_loader(dataset, batch_size, shuffle=True, seed=0), list(source.class_names)


@torch.no_grad()
def top1_percent(learner: Any, items: list[Any], names: list[str]) -> float:
    """Top-1 accuracy (percent) of `learner` on `items`, one image at a time."""
    learner.eval()
    transform = eval_transform(learner.preprocess)
    classes = learner.encode_classes(names)
    right = 0
    for item in items:
        pixels = transform(item.open_rgb()).unsqueeze(0)
        scores = learner.logits(learner.encode_images(pixels), classes)[0]
        right += names[int(scores.argmax())] == item.label
    return 100.0 * right / len(items)


def test_schedule_warms_up_then_decays_to_zero() -> None:
    config = make_config("coop", {"lr": 0.1, "warmup_lr": 1e-5})
    rates = [learning_rate(step, 100, 10, config) for step in range(100)]
    assert rates[:10] == [1e-5] * 10
    assert rates[10] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False))
    assert rates[-1] < 1e-3


def test_coop_halves_its_training_loss(colour_folder: Path, tiny_backbone: Backbone) -> None:
    """A learning check on a random-init backbone: the context alone must fit the data."""
    loader, names = loader_for(colour_folder, tiny_backbone)
    torch.manual_seed(0)
    config = make_config("coop", {"n_ctx": 16, "optimizer": "adam", "lr": 0.02, "epochs": 25})
    learner = create_method("coop", tiny_backbone, config)
    steps: list[Progress] = []
    result = fit(learner, loader, names, FitOptions(seed=0, progress=steps.append))
    assert result.steps == 25 * len(loader) == len(steps)
    assert steps[-1].eta_s == 0
    assert result.losses[-1] <= 0.5 * result.losses[0]
    assert evaluate(learner, loader, names) > 50.0


def test_zeroshot_fits_nothing(colour_folder: Path, tiny_backbone: Backbone) -> None:
    loader, names = loader_for(colour_folder, tiny_backbone)
    result = fit(create_method("zeroshot", tiny_backbone), loader, names)
    assert (result.steps, result.losses) == (0, [])


def test_cancellation_stops_the_run(colour_folder: Path, tiny_backbone: Backbone) -> None:
    loader, names = loader_for(colour_folder, tiny_backbone)
    learner = create_method("coop", tiny_backbone, {"epochs": 5})
    calls = iter(range(1000))
    with pytest.raises(TrainingCancelled):
        fit(learner, loader, names, FitOptions(should_stop=lambda: next(calls) >= 3))
    assert not learner.training


def test_the_same_seed_gives_the_same_weights(colour_folder: Path, tiny_backbone: Backbone) -> None:
    loader, names = loader_for(colour_folder, tiny_backbone)
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        learner = create_method("coop", tiny_backbone, {"epochs": 2, "n_ctx": 2})
        loader, names = loader_for(colour_folder, tiny_backbone)
        fit(learner, loader, names, FitOptions(seed=3))
        runs.append(learner.ctx.detach().clone())  # type: ignore[union-attr]
    assert torch.equal(runs[0], runs[1])


def test_heldout_images_are_the_ones_not_trained_on(tmp_path: Path) -> None:
    from promptserve.training.api import HELDOUT_PER_CLASS, TrainRequest, fit_learner, score_fitted

    request = TrainRequest(
        method="coop",
        data="synthetic:color-shape-base?n=5&seed=1&size=32",
        store=tmp_path,
        name="held",
        backbone="tiny",
        shots=2,
        overrides={"epochs": 1, "batch_size": 64},
        heldout=True,
    )
    fitted = fit_learner(request)
    assert fitted.heldout is not None
    trained = {item.key for item in fitted.train.items}
    held = {item.key for item in fitted.heldout.items}
    assert not trained & held
    assert fitted.heldout.counts() == dict.fromkeys(fitted.class_names, 3)
    assert HELDOUT_PER_CLASS >= 3
    metrics = score_fitted(fitted)
    assert metrics["heldout_images"] == 3 * len(fitted.class_names)
    # each figure equals the share of its images the learner ranks first, counted here one
    # image at a time (not through score_fitted's loader and evaluate)
    zeroshot = create_method("zeroshot", fitted.backbone)
    expected = {
        "train_accuracy": top1_percent(fitted.learner, fitted.train.items, fitted.class_names),
        "heldout_accuracy": top1_percent(fitted.learner, fitted.heldout.items, fitted.class_names),
        "heldout_zeroshot_accuracy": top1_percent(
            zeroshot, fitted.heldout.items, fitted.class_names
        ),
    }
    assert {key: metrics[key] for key in expected} == pytest.approx(expected, abs=0.006)
    # without the flag nothing is held out, and only the training accuracy is scored
    plain = fit_learner(dataclasses.replace(request, heldout=False))
    assert plain.heldout is None
    assert set(score_fitted(plain)) == {"train_accuracy"}


@pytest.mark.parametrize(("capability", "autocast"), [((7, 5), False), ((8, 0), True)])
def test_auto_precision_uses_bf16_only_where_it_is_native(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], autocast: bool
) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    context = autocast_for(torch.device("cuda"), "auto")
    assert isinstance(context, torch.autocast) is autocast
