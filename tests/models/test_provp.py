"""provp-specific checks; the registry suites (test_methods, test_artifact) cover the contract."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from promptserve.models.backbone import Backbone, hash_state_dict, load_backbone
from promptserve.models.methods import Batch, create_method, make_config
from promptserve.models.methods.provp import ProVPLearner
from promptserve.training.loop import fit
from tests.helpers import (
    NAMES,
    pixels,
    reference_encode,
    synthetic_tensors,
    vision_block_io,
)
from tests.numerics import assert_close


def make(backbone: Backbone, **overrides: object) -> ProVPLearner:
    torch.manual_seed(0)
    learner = create_method("provp", backbone, make_config("provp", overrides))
    assert isinstance(learner, ProVPLearner)
    return learner.eval()


def test_bank_has_one_prompt_per_block_with_vpt_init(tiny_backbone: Backbone) -> None:
    learner = make(tiny_backbone)
    tower = learner.vision.tower
    assert learner.bank.shape == (len(tower.blocks), 16, tower.width)
    bound = math.sqrt(6 / (3 * tower.patch_size**2 + tower.width))  # the real patch size, 8
    assert learner.bank.abs().max() <= bound
    assert learner.bank.abs().max() > 0.95 * bound  # uniform over the whole range
    assert learner.describe() == {
        "learnable_parameters": len(tower.blocks) * 16 * tower.width,
        "tokens_per_image": 1 + tower.num_patches + 16,
    }


def test_presets_follow_the_paper() -> None:
    assert make_config("provp", preset="base2novel") == make_config("provp")
    fewshot = make_config("provp", preset="fewshot")
    assert (fewshot.n_prompts, fewshot.epochs, fewshot.weight_decay) == (50, 200, 5e-4)  # type: ignore[attr-defined]


def test_with_alpha_zero_every_block_sees_exactly_its_prompt(tiny_backbone: Backbone) -> None:
    learner = make(tiny_backbone, alpha=0.0)
    tower, m = learner.vision.tower, learner.config.n_prompts
    with torch.no_grad(), vision_block_io(learner) as (seen, _):
        learner.encode_images(pixels(3))
    assert len(seen) == len(tower.blocks)
    for index, x in enumerate(seen):
        assert x.shape == (3, 1 + m + tower.num_patches, tower.width)  # kept to the last block
        assert torch.equal(x[:, 1 : 1 + m], learner.bank[index].expand(3, -1, -1))


def test_progressive_link_matches_a_direct_computation(tiny_backbone: Backbone) -> None:
    learner = make(tiny_backbone)  # alpha = 0.01
    tower, bank, m = learner.vision.tower, learner.bank.detach(), learner.config.n_prompts
    image = pixels(2, seed=1)
    with torch.no_grad(), vision_block_io(learner) as (seen, _):
        learner.encode_images(image)
        # written out: ln_pre over CLS + patches, P_0 after CLS, block 0, then the link
        x = tower.ln_pre(tower.embed_patches(image))
        x = torch.cat([x[:, :1], bank[0].expand(2, -1, -1), x[:, 1:]], dim=1)
        out = tower.blocks[0](x)
        slots = 0.01 * out[:, 1 : 1 + m] + 0.99 * bank[1]
        expected = torch.cat([out[:, :1], slots, out[:, 1 + m :]], dim=1)
    torch.testing.assert_close(seen[0], x, atol=0, rtol=0)
    assert_close(seen[1], expected)


def test_class_embeddings_are_zeroshots(tiny_backbone: Backbone) -> None:
    template = "a blurry photo of a {}."
    learner = make(tiny_backbone, template=template)
    zeroshot = create_method("zeroshot", tiny_backbone, {"templates": [template]})
    with torch.no_grad():
        torch.testing.assert_close(
            learner.encode_classes(NAMES), zeroshot.encode_classes(NAMES), atol=0, rtol=0
        )
    assert not learner.encode_classes(NAMES).requires_grad  # the text side learns nothing


def test_reformation_loss_is_positive_and_trains_only_the_bank(tiny_backbone: Backbone) -> None:
    learner = make(tiny_backbone).train()
    before = hash_state_dict(tiny_backbone.model.state_dict())
    image = pixels(6, seed=2)
    term = learner.reformation_loss(learner.encode_images(image), image)
    assert term.item() > 0
    term.backward()
    assert learner.bank.grad is not None
    assert learner.bank.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_backbone.model.parameters())
    torch.optim.SGD([learner.bank], lr=1.0).step()
    assert hash_state_dict(tiny_backbone.model.state_dict()) == before


def test_frozen_features_never_carry_gradient() -> None:
    backbone = load_backbone("tiny")  # a private copy: this test unfreezes it
    learner = make(backbone)
    backbone.model.requires_grad_(True)
    frozen = learner.frozen_features(pixels(2))
    assert not frozen.requires_grad
    with torch.no_grad():
        plain = F.normalize(reference_encode(learner.vision.tower, pixels(2)), dim=-1)
    assert_close(frozen, plain)


def test_the_frozen_pass_runs_only_in_the_loss(tiny_backbone: Backbone) -> None:
    learner = make(tiny_backbone)
    image = pixels(4)
    with torch.no_grad(), vision_block_io(learner) as (seen, _):
        learner.encode_images(image)
    assert len(seen) == len(learner.vision.tower.blocks)  # one prompted pass at inference
    with torch.no_grad(), vision_block_io(learner) as (seen, _):
        learner.loss(Batch(image, torch.arange(4), NAMES))
    assert len(seen) == 2 * len(learner.vision.tower.blocks)  # prompted + frozen
    patches = learner.vision.tower.num_patches
    assert {x.shape[1] for x in seen} == {1 + patches + learner.config.n_prompts, 1 + patches}


def test_a_short_run_on_the_synthetic_base_task_lowers_the_loss(tiny_backbone: Backbone) -> None:
    # On the random-init tiny backbone the frozen class embeddings are nearly collinear (mean
    # cosine ~0.93), so a visual-only method can move the loss only a little; the run is
    # deterministic (fixed seed and order, no augmentation), so a small margin is a real check.
    images, labels, names = synthetic_tensors(tiny_backbone.preprocess)
    learner = make(tiny_backbone, optimizer="adam", lr=0.1, epochs=4, warmup_epochs=0)

    def terms() -> tuple[float, float]:
        with torch.no_grad():
            prompted = learner.encode_images(images)
            logits = learner.logits(prompted, learner.encode_classes(names))
            ce = F.cross_entropy(logits, labels).item()
            return ce, learner.reformation_loss(prompted, images).item()

    ce_before, ref_before = terms()
    fit(learner, list(zip(images.split(32), labels.split(32), strict=True)), names)
    ce_after, ref_after = terms()
    assert ce_after + ref_after < ce_before + ref_before - 0.02
    assert ce_after < ce_before
