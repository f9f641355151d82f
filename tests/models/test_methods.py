"""Every registered method, held to the same contract (timm's tests-over-the-registry style)."""

from __future__ import annotations

import pytest
import torch

from promptserve.models.backbone import Backbone, hash_state_dict
from promptserve.models.methods import Batch, Learner
from tests.helpers import NAMES, create_learner, method_cases, perturb, pixels
from tests.numerics import assert_close

LEARNS_NOTHING = {"zeroshot"}  # the baseline: class names only, no learned tensors
MORE_NAMES = ["purple ring", "orange cross", *NAMES, "pink hexagon"]


def make(name: str, backbone: Backbone, seed: int = 0) -> Learner:
    torch.manual_seed(seed)
    return create_learner(name, backbone).eval()


@pytest.fixture(params=method_cases())
def method(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_output_shapes_and_norms(method: str, tiny_backbone: Backbone) -> None:
    learner = make(method, tiny_backbone)
    with torch.no_grad():
        classes = learner.encode_classes(NAMES)
        images = learner.encode_images(pixels(3))
    dim = tiny_backbone.model.text_projection.shape[1]
    assert classes.shape == (len(NAMES), dim)
    assert images.shape == (3, dim)
    for emb in (classes, images):
        assert torch.isfinite(emb).all()
        assert torch.allclose(emb.norm(dim=-1), torch.ones(len(emb)), atol=1e-5)


def test_gradients_reach_only_the_learner(method: str, tiny_backbone: Backbone) -> None:
    learner = make(method, tiny_backbone).train()
    before = hash_state_dict(tiny_backbone.model.state_dict())
    params = learner.trainable_parameters()
    backbone_params = set(map(id, tiny_backbone.model.parameters()))
    assert not any(id(p) in backbone_params for p in params)
    assert all(not p.requires_grad for p in tiny_backbone.model.parameters())
    loss = learner.loss(Batch(pixels(4), torch.tensor([0, 1, 2, 3]), NAMES))
    assert torch.isfinite(loss)
    if method in LEARNS_NOTHING:
        assert not params
        assert not loss.requires_grad
        return
    assert params, f"{method} has nothing to train"
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    torch.optim.SGD(params, lr=0.1).step()
    assert all(p.grad is None for p in tiny_backbone.model.parameters())
    assert hash_state_dict(tiny_backbone.model.state_dict()) == before


def test_image_embedding_does_not_depend_on_its_batch(method: str, tiny_backbone: Backbone) -> None:
    learner = make(method, tiny_backbone)
    perturb(learner)
    image = pixels(1, seed=3)
    batch = torch.cat([pixels(3, seed=4), image, pixels(4, seed=5)])  # 7 others around it
    with torch.no_grad():
        alone = learner.encode_images(image)
        inside = learner.encode_images(batch)[3:4]
    assert_close(alone, inside)


def test_class_embedding_does_not_depend_on_the_label_set(
    method: str, tiny_backbone: Backbone
) -> None:
    learner = make(method, tiny_backbone)
    perturb(learner)
    with torch.no_grad():
        alone = learner.encode_classes(["red star"])
        inside = learner.encode_classes(MORE_NAMES)[MORE_NAMES.index("red star")]
    assert_close(alone[0], inside)


def test_learned_state_round_trip_gives_identical_logits(
    method: str, tiny_backbone: Backbone
) -> None:
    trained = make(method, tiny_backbone, seed=0)
    perturb(trained)
    fresh = make(method, tiny_backbone, seed=123)
    fresh.load_learned_state_dict(trained.learned_state_dict())
    with torch.no_grad():
        a = trained.logits(trained.encode_images(pixels(2)), trained.encode_classes(NAMES))
        b = fresh.logits(fresh.encode_images(pixels(2)), fresh.encode_classes(NAMES))
    assert torch.equal(a, b)


def test_learned_state_holds_the_method_parameters_only(
    method: str, tiny_backbone: Backbone
) -> None:
    learner = make(method, tiny_backbone)
    state = learner.learned_state_dict()
    trainable = {name for name, p in learner.named_parameters() if p.requires_grad}
    assert trainable <= set(state)
    assert not any(key.startswith(("text.", "vision.")) for key in state)  # the frozen towers


def test_a_few_steps_lower_the_loss(method: str, tiny_backbone: Backbone) -> None:
    learner = make(method, tiny_backbone).train()
    params = learner.trainable_parameters()
    if method in LEARNS_NOTHING:
        assert not params
        return
    batch = Batch(pixels(8, seed=7), torch.arange(8) % len(NAMES), NAMES)
    optimizer = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(8):
        loss = learner.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
