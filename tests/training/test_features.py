"""Training from cached features: same steps as the uncached path, one encoding per view."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from promptserve.models.backbone import Backbone, load_backbone
from promptserve.models.errors import ConfigError
from promptserve.models.integrity import verify_artifact
from promptserve.models.methods import Learner, create_method, list_methods
from promptserve.models.methods.coop import CoOpConfig
from promptserve.models.methods.registry import register_method, unregister_method
from promptserve.models.preprocess import eval_transform, train_transform
from promptserve.training.cli import main
from promptserve.training.data import ImageDataset, make_loader, open_dataset
from promptserve.training.loop import FitOptions, fit
from tests.helpers import create_learner, make_image_folder

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220)}
PER_CLASS = 6
BATCH = 4  # 18 images: 5 batches, the last one partial


@pytest.fixture(scope="module")
def mini() -> Backbone:
    return load_backbone("mini")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("cache"), COLOURS, per_class=PER_CLASS)


def loader_for(folder: Path, backbone: Backbone, *, augment: bool = False):  # type: ignore[no-untyped-def]
    source = open_dataset(str(folder))
    transform = (
        train_transform(backbone.preprocess, scale=(0.5, 1.0))
        if augment
        else eval_transform(backbone.preprocess)
    )
    dataset = ImageDataset(source, transform, list(source.class_names))
    return make_loader(dataset, BATCH, shuffle=True, seed=7), list(source.class_names)


def count_encoded(learner: Learner) -> list[int]:
    """Wrap the learner's image encoder; the list collects each call's batch size."""
    sizes: list[int] = []
    encode = learner.encode_images

    def counted(pixels: Tensor) -> Tensor:
        sizes.append(len(pixels))
        return encode(pixels)

    learner.encode_images = counted  # type: ignore[method-assign]
    return sizes


def run(folder: Path, backbone: Backbone, method: str, views: int, epochs: int = 4):  # type: ignore[no-untyped-def]
    loader, names = loader_for(folder, backbone)
    torch.manual_seed(3)
    overrides = {"epochs": epochs, "feature_views": views, "optimizer": "adam", "lr": 0.01}
    learner = create_method(method, backbone, overrides)
    sizes = count_encoded(learner)
    return fit(learner, loader, names, FitOptions(seed=11)), learner, sizes


@pytest.mark.parametrize("method", ["coop", "pre"])
def test_one_cached_view_takes_the_uncached_steps(
    folder: Path, mini: Backbone, method: str
) -> None:
    """With a deterministic transform and one view, caching changes only where the image
    embeddings come from: the batches, their order and so the losses are the same."""
    plain, _, _ = run(folder, mini, method, views=0)
    cached, _, _ = run(folder, mini, method, views=1)
    assert plain.feature_cache is None
    assert cached.feature_cache is not None
    assert cached.feature_cache["views"] == 1
    assert cached.steps == plain.steps == 4 * 5
    assert cached.losses == pytest.approx(plain.losses, rel=1e-4)
    assert plain.losses[-1] < plain.losses[0]  # it trained, so equal trajectories mean something


def test_the_encoder_runs_once_per_image_view_not_per_epoch(folder: Path, mini: Backbone) -> None:
    images = len(COLOURS) * PER_CLASS
    _, _, uncached = run(folder, mini, "coop", views=0, epochs=4)
    result, _, cached = run(folder, mini, "coop", views=2, epochs=4)
    assert sum(uncached) == 4 * images
    assert sum(cached) == 2 * images
    cache = result.feature_cache
    assert cache is not None
    assert (cache["views"], cache["images"]) == (2, images)
    assert cache["bytes"] == 2 * images * mini.model.visual.output_dim * 4  # float32


def test_views_are_capped_at_one_per_epoch(folder: Path, mini: Backbone) -> None:
    result, _, sizes = run(folder, mini, "coop", views=8, epochs=3)
    assert result.feature_cache is not None
    assert result.feature_cache["views"] == 3
    assert sum(sizes) == 3 * len(COLOURS) * PER_CLASS


def test_augmented_views_are_seeded(folder: Path, mini: Backbone) -> None:
    """The views' augmentations and the per-epoch choice among them follow the seed."""
    runs = []
    for _ in range(2):
        loader, names = loader_for(folder, mini, augment=True)
        torch.manual_seed(3)
        learner = create_method("coop", mini, {"epochs": 2, "feature_views": 2})
        runs.append(fit(learner, loader, names, FitOptions(seed=5)).losses)
        assert learner.ctx.grad is not None  # type: ignore[union-attr]
    assert runs[0] == pytest.approx(runs[1], rel=1e-4)


FROZEN_VISUAL = {
    "zeroshot",
    "coop",
    "pre",
    "linear_probe",
}  # the plain tower; every other method prompts it


@pytest.mark.parametrize("method", list_methods())
def test_only_plain_tower_methods_take_the_cached_path(
    folder: Path, tiny_backbone: Backbone, method: str
) -> None:
    backbone = copy.deepcopy(tiny_backbone)
    loader, names = loader_for(folder, backbone)
    learner = create_learner(method, backbone, names, {"epochs": 1, "feature_views": 4})
    assert learner.frozen_visual == (method in FROZEN_VISUAL)
    learner.prepare_training(names, loader)
    result = fit(learner, loader, names)
    if method == "zeroshot":
        assert result.steps == 0  # nothing to learn, so nothing to encode either
    else:
        assert result.steps == len(loader)
        assert (result.feature_cache is not None) == (method in FROZEN_VISUAL)


def test_a_frozen_visual_claim_is_checked_at_registration() -> None:
    class Prompted(Learner):
        frozen_visual = True

        def encode_images(self, pixels: Tensor) -> Tensor:
            return pixels.flatten(1)

    with pytest.raises(ConfigError, match="overrides encode_images"):
        register_method("prompted-but-frozen", CoOpConfig)(Prompted)
    unregister_method("prompted-but-frozen")


def test_negative_views_are_refused(folder: Path, mini: Backbone) -> None:
    with pytest.raises(ConfigError, match="feature_views"):
        run(folder, mini, "coop", views=-1)


def test_a_cli_run_trains_from_cached_features(folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    args = [
        *("train", "--method", "coop", "--data", str(folder), "--store", str(store)),
        *("--name", "colours", "--backbone", "mini", "--shots", "4", "--epochs", "3"),
        *("--set", "batch_size=4", "--set", "feature_views=2"),
    ]
    assert main(args) == 0
    training = verify_artifact(store / "colours" / "1")["training"]
    assert training["feature_cache"]["views"] == 2
    assert training["feature_cache"]["images"] == 3 * 4
    assert training["steps"] == 3 * 3
    assert all(math.isfinite(loss) for loss in training["epoch_losses"])
