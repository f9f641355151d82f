"""dcp-specific checks; the registry suites (test_methods, test_artifact) cover the contract."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor

from promptserve.models.backbone import Backbone, load_backbone
from promptserve.models.methods import Batch, create_method, make_config
from promptserve.models.methods.dcp import DCPLearner
from promptserve.training.loop import fit
from tests.helpers import NAMES, perturb, pixels, synthetic_tensors, vision_block_io
from tests.numerics import RTOL_FLOAT64, assert_close


def make(backbone: Backbone, **overrides: object) -> DCPLearner:
    torch.manual_seed(0)
    learner = create_method("dcp", backbone, make_config("dcp", overrides))
    assert isinstance(learner, DCPLearner)
    return learner.eval()


@pytest.fixture(scope="module")
def mini_random() -> Backbone:
    """The mini architecture (4 blocks), enough depth to see refreshed and carried blocks."""
    return load_backbone("mini")


def test_depth_is_clamped_to_the_backbone(tiny_backbone: Backbone, mini_random: Backbone) -> None:
    assert make(tiny_backbone).depth == 1  # 2 blocks: only block 1 can be refreshed
    assert make(mini_random).depth == 3
    assert make(mini_random, depth=2).depth == 2
    learner = make(tiny_backbone)
    assert learner.queries().shape == (1, 16, learner.vision.width)


def test_parameter_count_and_tokens(tiny_backbone: Backbone) -> None:
    learner = make(tiny_backbone)
    dt, dv = learner.text.width, learner.vision.width
    cmpa = (dt * dv + dv) + 2 * 2 * dv + (4 * dv * dv + 4 * dv) + (8 * dv * dv + 5 * dv)
    assert learner.describe() == {
        "learnable_parameters": 16 * (dt + dv) + cmpa,
        "tokens_per_image": 1 + learner.vision.tower.num_patches + 16,
        "cmpa_blocks": 1,
    }


def test_context_states_do_not_depend_on_the_class(mini_random: Backbone) -> None:
    # an exact claim (the causal mask hides the class tokens from the context slots), so both
    # paths run in float64, where no CPU kernel's rounding comes near the tolerance
    learner = make(mini_random)
    perturb(learner)
    learner = copy.deepcopy(learner).double()
    tokens = learner.text.class_tokens(NAMES, 16)
    record: list[Tensor] = []
    with torch.no_grad():
        learner.text.run(tokens.with_context(learner.ctx_t), record=record)
        states = learner.context_states()  # from [SOS, C_t] alone
    for level in range(learner.depth):  # T_l is the input of text block l = l-1's output
        full = record[level + 1][:, tokens.context_slots]  # [C, n, Dt]
        assert_close(full, states[level].expand_as(full), RTOL_FLOAT64, f"level {level}")


@pytest.mark.parametrize("through_ln_pre", [False, True])
def test_slots_are_refreshed_per_image_up_to_depth_then_carried(
    mini_random: Backbone, through_ln_pre: bool
) -> None:
    learner = make(mini_random, depth=2, prompts_through_ln_pre=through_ln_pre)
    perturb(learner)
    end = slice(-16, None)  # the prompts sit at the end of the sequence
    with torch.no_grad(), vision_block_io(learner) as (inputs, outputs):
        learner.encode_images(pixels(3, size=64))
        queries = learner.queries()
    ctx_v = learner.ctx_v.detach()
    expected_first = learner.vision.tower.ln_pre(ctx_v) if through_ln_pre else ctx_v
    assert_close(inputs[0][:, end], expected_first.expand(3, -1, -1))
    for level in (1, 2):  # refreshed from each image's own previous prompt outputs
        previous = outputs[level - 1][:, end]
        with torch.no_grad():
            refreshed = torch.cat([learner.cmpa(queries[level - 1], v[None]) for v in previous])
        assert_close(inputs[level][:, end], refreshed, what=f"level {level}")
    assert torch.equal(inputs[3][:, end], outputs[2][:, end])  # carried after depth


def test_folded_graph_equals_the_eager_learner(tiny_backbone: Backbone) -> None:
    learner = make(tiny_backbone)
    perturb(learner)
    graph = learner.visual_graph().eval()
    in_graph = {id(t) for t in graph.state_dict(keep_vars=True).values()}
    assert not in_graph & {id(t) for t in learner.text.state_dict(keep_vars=True).values()}
    assert id(learner.ctx_t) not in in_graph  # no text tower, no text context: constants only
    for batch in (1, 7):
        image = pixels(batch, seed=batch)
        with torch.no_grad():
            eager = learner.encode_images(image)  # runs the text prefix every call
            folded = graph(image)
        assert_close(folded, eager, what=f"batch {batch}")
    # the queries are constants: changing the text context now moves only the eager learner
    with torch.no_grad():
        learner.ctx_t.add_(0.5)
        assert not torch.allclose(learner.encode_images(pixels(2)), graph(pixels(2)))


def test_cmpa_and_both_contexts_receive_gradients(tiny_backbone: Backbone) -> None:
    learner = make(tiny_backbone).train()
    learner.loss(Batch(pixels(4), torch.arange(4), NAMES)).backward()
    for name, param in learner.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, name
            assert param.grad.abs().sum() > 0, name
    assert any(name.startswith("cmpa.") for name, _ in learner.named_parameters())


def test_an_image_is_unchanged_when_its_batch_mates_change(tiny_backbone: Backbone) -> None:
    learner = make(tiny_backbone)
    perturb(learner)
    image = pixels(1, seed=9)
    with torch.no_grad():
        first = learner.encode_images(torch.cat([image, pixels(3, seed=10)]))[0]
        second = learner.encode_images(torch.cat([pixels(5, seed=11) * 3, image]))[-1]
    assert_close(first, second)


def test_a_short_run_on_the_synthetic_base_task_lowers_the_loss(tiny_backbone: Backbone) -> None:
    # A random-init tiny backbone barely separates the synthetic classes (coop too stays near
    # log C here), so this only checks that training moves the loss down, deterministically
    # (fixed seed and order, no augmentation); the mini preset is checked in test_learning.py.
    images, labels, names = synthetic_tensors(tiny_backbone.preprocess)
    learner = make(tiny_backbone, optimizer="adam", lr=0.005, epochs=3, warmup_epochs=0)
    whole = Batch(images, labels, names)
    with torch.no_grad():
        before = learner.loss(whole).item()
    fit(learner, list(zip(images.split(32), labels.split(32), strict=True)), names)
    with torch.no_grad():
        after = learner.loss(whole).item()
    assert after < before - 0.03
