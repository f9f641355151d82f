"""The training package's public entry points, as the service uses them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from promptserve.models.backbone import DEFAULT_BACKBONE
from promptserve.training import request
from promptserve.training.api import default_preset, summarize_dataset, world_class_names
from promptserve.training.errors import DataError


def test_the_torch_free_request_defaults_to_the_models_backbone() -> None:
    assert request.DEFAULT_BACKBONE == DEFAULT_BACKBONE


def test_summarize_dataset_counts_classes_and_images(tmp_path: Path) -> None:
    from PIL import Image

    for name, count in (("cat", 2), ("dog", 3)):
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.new("RGB", (8, 8)).save(tmp_path / name / f"{i}.png")
    found = summarize_dataset(str(tmp_path))
    assert (found.class_names, found.images) == (["cat", "dog"], 5)
    with pytest.raises(DataError):
        summarize_dataset(str(tmp_path / "absent"))


def test_world_class_names_are_the_64_colour_shapes() -> None:
    names = world_class_names()
    assert len(names) == len(set(names)) == 64
    assert "red star" in names


def test_a_run_without_a_preset_takes_the_backbones_own() -> None:
    assert default_preset("coop", "mini") == "mini"
    assert default_preset("provp", "mini:openai") == "mini"
    assert default_preset("coop", "ViT-B-16") is None  # the papers' recipe, the config's defaults
    assert default_preset("zeroshot", "mini") is None  # nothing to tune


def test_config_for_stacks_data_preset_request_as_training_does() -> None:
    """`config_for` is what `fit_learner` trains with and what the service's job intake checks:
    the data's recipe, then the preset (the backbone's own by default), then the request."""
    from promptserve.training.api import ImageSource, TrainRequest, config_for

    data = ImageSource(["a", "b"], [], recipe={"epochs": 7, "batch_size": 3})
    run = TrainRequest(method="coop", data="", store=Path("."), name="x", backbone="tiny")
    assert (config_for(run, data).epochs, config_for(run, data).batch_size) == (7, 3)
    assert config_for(replace(run, epochs=2), data).epochs == 2
    assert config_for(replace(run, overrides={"batch_size": 5}), data).batch_size == 5
    # the mini preset sets the epochs itself: the data's value gives way to it
    on_mini = replace(run, backbone="mini")
    assert config_for(on_mini, data).epochs == config_for(on_mini, ImageSource(["a"], [])).epochs
    # zeroshot trains nothing: a request's epochs do not reach its config
    zeroshot = replace(run, method="zeroshot", epochs=1000)
    assert config_for(zeroshot, data).epochs != 1000
