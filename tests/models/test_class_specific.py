"""Learners with state per training class: coop's class-specific context and the linear probe."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from promptserve.models.artifact import publish_classifier
from promptserve.models.backbone import Backbone, load_backbone
from promptserve.models.errors import ConfigError
from promptserve.models.labels import load_learner
from promptserve.models.methods import Learner, create_method
from promptserve.models.preprocess import eval_transform
from promptserve.training.api import TrainRequest, fit_learner
from promptserve.training.data import ImageDataset, ImageSource, make_loader, open_dataset
from promptserve.training.loop import evaluate
from promptserve.training.recipe import evaluated_with, resolve_config
from tests.helpers import NAMES, create_learner, perturb, pixels

CLASS_SPECIFIC = ["coop-csc", "linear_probe"]
UNKNOWN = ["purple ring", "item z9"]


def logits(learner: Learner, names: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return learner.logits(learner.encode_images(pixels(3)), learner.encode_classes(names))


@pytest.mark.parametrize("case", CLASS_SPECIFIC)
def test_an_artifact_reloads_with_identical_logits(
    case: str, tiny_backbone: Backbone, tmp_path: Path
) -> None:
    learner = create_learner(case, tiny_backbone).eval()
    perturb(learner)
    path = publish_classifier(learner, NAMES, tmp_path, case, format_version=1)
    restored = load_learner(path, backbone=tiny_backbone)
    assert restored.config == learner.config
    for names in (NAMES, [*UNKNOWN, NAMES[2]]):  # trained names, then open-vocabulary ones
        assert torch.equal(logits(restored, names), logits(learner, names))


def test_csc_learns_a_context_per_class(tiny_backbone: Backbone) -> None:
    torch.manual_seed(0)
    learner = create_learner("coop-csc", tiny_backbone, config={"n_ctx": 4}).eval()
    assert learner.ctx.shape == (len(NAMES), 4, learner.text.width)
    assert all(not torch.equal(learner.ctx[0], row) for row in learner.ctx[1:])
    with torch.no_grad():
        own = learner.encode_classes(NAMES)
        learner.ctx.copy_(learner.ctx.roll(1, dims=0))  # every class gets another's context
        swapped = learner.encode_classes(NAMES)
    assert not torch.allclose(own, swapped, atol=1e-4)


def test_csc_from_words_starts_every_class_from_them(tiny_backbone: Backbone) -> None:
    learner = create_learner("coop-csc", tiny_backbone, config={"ctx_init": "a photo of a"})
    shared = create_method("coop", tiny_backbone, {"ctx_init": "a photo of a"})
    assert learner.ctx.shape == (len(NAMES), *shared.ctx.shape)
    assert all(torch.equal(row, shared.ctx) for row in learner.ctx)


def test_csc_gives_other_names_the_mean_context(tiny_backbone: Backbone) -> None:
    learner = create_learner("coop-csc", tiny_backbone).eval()
    perturb(learner)
    shared = create_method("coop", tiny_backbone).eval()
    with torch.no_grad():
        shared.ctx.copy_(learner.ctx.mean(dim=0))
        assert torch.allclose(
            learner.encode_classes(UNKNOWN), shared.encode_classes(UNKNOWN), atol=1e-6
        )
        assert not torch.allclose(
            learner.encode_classes(NAMES), shared.encode_classes(NAMES), atol=1e-4
        )


def test_the_probe_gives_other_names_their_template_embedding(tiny_backbone: Backbone) -> None:
    templates = ("a photo of a {}.", "art of the {}.")
    probe = create_learner("linear_probe", tiny_backbone, config={"templates": templates})
    perturb(probe)
    zeroshot = create_method("zeroshot", tiny_backbone, {"templates": templates})
    with torch.no_grad():
        assert torch.allclose(
            probe.encode_classes(UNKNOWN), zeroshot.encode_classes(UNKNOWN), atol=1e-6
        )
        rows = F.normalize(probe.weight, dim=-1)  # type: ignore[arg-type]
        assert torch.equal(probe.encode_classes(NAMES[::-1]), rows.flip(0))


def test_the_probe_starts_from_each_class_mean_image(tiny_backbone: Backbone) -> None:
    probe = create_learner("linear_probe", tiny_backbone)
    images, labels = pixels(6, seed=2), torch.tensor([1, 1, 0, 0, 2, 2])
    label_set = [NAMES[1], NAMES[0], NAMES[3]]  # the batches' order, not the config's
    probe.prepare_training(label_set, [(images[:3], labels[:3]), (images[3:], labels[3:])])
    with torch.no_grad():
        frozen = F.normalize(probe.vision(images), dim=-1)
        means = F.normalize(torch.stack([frozen[labels == i].mean(0) for i in range(3)]), dim=-1)
        template = probe.text.encode_templates([NAMES[2]], probe.config.templates)  # type: ignore[attr-defined]
        assert torch.allclose(probe.encode_classes(label_set), means, atol=1e-6)
        assert torch.allclose(probe.encode_classes([NAMES[2]]), template, atol=1e-6)  # no image


@pytest.mark.parametrize("case", CLASS_SPECIFIC)
def test_a_class_specific_learner_needs_its_classes(case: str, tiny_backbone: Backbone) -> None:
    method, options = ("coop", {"csc": True}) if case == "coop-csc" else (case, {})
    with pytest.raises(ConfigError, match="needs `classnames`"):
        create_method(method, tiny_backbone, options)
    with pytest.raises(ConfigError, match="repeated: red star"):
        create_method(method, tiny_backbone, {**options, "classnames": [*NAMES, "red star"]})


def test_training_fills_the_classes_and_refuses_them_as_an_override() -> None:
    source = ImageSource(["item r7", "item b1"], [])
    assert resolve_config("linear_probe", source).classnames == ("item r7", "item b1")  # type: ignore[attr-defined]
    assert resolve_config("coop", source, {"csc": True}).classnames == ("item r7", "item b1")  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="taken from the training data"):
        resolve_config("linear_probe", source, {"classnames": ["a", "b"]})
    assert "classnames" not in dataclasses.asdict(resolve_config("pre", source))


def test_scoring_on_other_data_keeps_the_training_classes(tiny_backbone: Backbone) -> None:
    probe = create_learner("linear_probe", tiny_backbone)
    target = ImageSource(["purple ring"], [], template="a sketch of a {}.")
    with evaluated_with(probe, target):
        assert probe.config.templates == ("a sketch of a {}.",)  # type: ignore[attr-defined]
        assert probe.config.classnames == tuple(NAMES)  # type: ignore[attr-defined]


def test_the_probe_learns_classes_named_by_codes() -> None:
    """On `mini`, catalogue codes leave zero-shot near chance; the probe separates the images."""
    task = "synthetic:color-shape?names=catalogue&classes=8"
    train = open_dataset(f"{task}&n=8&seed=1", split="train")
    request = TrainRequest(
        method="linear_probe", data=task, store=Path("unused"), name="probe", backbone="mini",
        shots=8, seed=1, preset="mini", overrides={"epochs": 10},
    )  # fmt: skip
    probe = fit_learner(request, source=train).learner
    test = open_dataset(f"{task}&n=8&seed=0", split="test")
    loader = list(
        make_loader(ImageDataset(test, eval_transform(probe.preprocess)), 64, shuffle=False, seed=0)
    )
    names = list(test.class_names)
    zeroshot = evaluate(create_method("zeroshot", load_backbone("mini")), loader, names)
    tuned = evaluate(probe, loader, names)
    assert tuned >= zeroshot + 30, f"probe {tuned:.1f} vs zero-shot {zeroshot:.1f}"
