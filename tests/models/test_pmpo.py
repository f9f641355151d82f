"""PMPO: the depth partition, the prompt ensemble, constant visual prompts at export, learning.

The generic contract (shapes, gradients, per-sample semantics, round trips, export parity) runs
for `pmpo` in the registry suites of test_methods.py and test_artifact.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promptserve.models.backbone import Backbone, load_backbone
from promptserve.models.errors import ConfigError
from promptserve.models.export import export_visual_graph
from promptserve.models.methods import create_method
from promptserve.models.methods.coop import CoOpLearner
from promptserve.models.methods.pmpo import PMPOConfig, PMPOLearner, partition_sizes
from tests.helpers import NAMES, pixels, tiny_run_losses, vision_block_io
from tests.numerics import assert_close


@pytest.fixture(scope="module")
def mini_backbone() -> Backbone:
    return load_backbone("mini")  # 4 vision blocks; random init until its weights land


def make_pmpo(backbone: Backbone, seed: int = 0, **overrides: Any) -> PMPOLearner:
    torch.manual_seed(seed)
    learner = create_method("pmpo", backbone, overrides).eval()
    assert isinstance(learner, PMPOLearner)
    with torch.no_grad():  # move off the init, as training would
        for p in learner.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    return learner


@pytest.mark.parametrize(
    ("overrides", "blocks", "sizes"),
    [
        ({}, 12, (3, 3, 3)),  # ViT-B/16: 9 of 12 blocks
        ({}, 4, (1, 1, 1)),  # mini: 3 of 4
        ({}, 2, (1, 1, 0)),  # tiny: fewer blocks than prompts, the last one is text-only
        ({"depth": 10}, 12, (4, 3, 3)),
        ({"depth": 99}, 4, (2, 1, 1)),  # clamped to the tower
        ({"depth": 0}, 4, (0, 0, 0)),
        ({"partition": (2, 0, 1)}, 4, (2, 0, 1)),
        ({"n_prompts": 2, "depth": 3, "partition": (1, 2)}, 4, (1, 2)),
    ],
)
def test_partition_sizes(overrides: dict[str, Any], blocks: int, sizes: tuple[int, ...]) -> None:
    assert partition_sizes(PMPOConfig(**overrides), blocks) == sizes


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"partition": (1, 1)}, "3 non-negative"),
        ({"partition": (2, -1, 1)}, "3 non-negative"),
        ({"partition": (2, 2, 1)}, "more than the 4 blocks"),
        ({"partition": (1, 1, 1), "depth": 2}, "does not sum to depth 2"),
        ({"depth": -1}, "negative"),
        ({"n_ctx": 2}, "is 4 tokens; n_ctx is 2"),
        ({"template": "a photo"}, "needs a '{}'"),
        ({"n_prompts": 0}, "at least one prompt"),
    ],
)
def test_bad_settings_are_config_errors(
    mini_backbone: Backbone, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        create_method("pmpo", mini_backbone, overrides)


def test_prompts_without_blocks_have_no_projection(tiny_backbone: Backbone) -> None:
    learner = make_pmpo(tiny_backbone)
    assert learner.prompts.shape == (3, 4, learner.text.width)
    assert sorted(learner.proj) == ["0", "1"]
    proj = learner.proj["0"]
    assert isinstance(proj, nn.Linear)
    assert (proj.in_features, proj.out_features) == (learner.text.width, learner.vision.width)
    fresh = create_method("pmpo", tiny_backbone)
    assert isinstance(fresh, PMPOLearner)
    words = fresh.text.tower.embed_tokens(tiny_backbone.tokenize(["a photo of a"]))[0, 1:5]
    assert torch.equal(fresh.prompts[0].detach(), words)  # the first prompt: "a photo of a"


def record_blocks(learner: PMPOLearner, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """Each vision block's input and output, seen from hooks on the frozen blocks themselves."""
    with torch.no_grad(), vision_block_io(learner) as (inputs, outputs):
        learner.encode_images(images)
    return inputs, outputs


@pytest.mark.parametrize(
    ("overrides", "owners"),
    [
        ({}, (0, 1, 2)),
        ({"n_prompts": 2, "partition": (2, 1)}, (0, 0, 1)),
        ({"visual_position": "after_cls", "prompts_through_ln_pre": False}, (0, 1, 2)),
    ],
)
def test_each_partition_receives_its_prompts_projection(
    mini_backbone: Backbone, overrides: dict[str, Any], owners: tuple[int, ...]
) -> None:
    learner = make_pmpo(mini_backbone, **overrides)
    assert learner.owners == owners
    inputs, outputs = record_blocks(learner, pixels(3, 64))
    patches = learner.vision.tower.num_patches
    m = learner.config.n_ctx
    start = 1 if learner.config.visual_position == "after_cls" else 1 + patches
    slots = slice(start, start + m)
    assert inputs[0].shape[1] == 1 + patches + m
    with torch.no_grad():
        projected = [learner.proj[str(k)](learner.prompts[k]) for k in range(len(learner.proj))]
        for index, owner in enumerate(owners):
            expected = projected[owner]  # [M, Dv]
            if index == 0 and learner.config.prompts_through_ln_pre:  # as the patch tokens do
                expected = learner.vision.tower.ln_pre(expected)
            got = inputs[index][:, slots]
            assert_close(got, expected.expand_as(got))
    for index in range(len(owners), len(inputs)):  # after the partition: carried
        assert torch.equal(inputs[index][:, slots], outputs[index - 1][:, slots])


def test_one_prompt_without_the_template_is_coop(tiny_backbone: Backbone) -> None:
    torch.manual_seed(0)
    pmpo = create_method("pmpo", tiny_backbone, {"n_prompts": 1, "use_template": False})
    coop = create_method("coop", tiny_backbone, {"ctx_init": "a photo of a"})
    assert isinstance(pmpo, PMPOLearner)
    assert isinstance(coop, CoOpLearner)
    assert torch.equal(pmpo.prompts[0], coop.ctx)  # the same context to start from
    with torch.no_grad():
        pmpo.prompts.add_(0.05 * torch.randn_like(pmpo.prompts))
        coop.ctx.copy_(pmpo.prompts[0])
        assert_close(pmpo.encode_classes(NAMES), coop.encode_classes(NAMES))


def test_class_embedding_is_the_mean_of_prompt_and_template_features(
    tiny_backbone: Backbone,
) -> None:
    learner = make_pmpo(tiny_backbone, n_prompts=2)
    coop = create_method("coop", tiny_backbone, {"ctx_init": "a photo of a"})
    template = create_method("zeroshot", tiny_backbone)
    assert isinstance(coop, CoOpLearner)
    with torch.no_grad():
        feats = []
        for prompt in learner.prompts:
            coop.ctx.copy_(prompt)
            feats.append(coop.encode_classes(NAMES))  # norm(g_k)
        feats.append(template.encode_classes(NAMES))  # norm(h)
        expected = F.normalize(torch.stack(feats).mean(dim=0), dim=-1)
        assert_close(learner.encode_classes(NAMES), expected)


def test_export_folds_the_visual_prompts_into_constants(
    mini_backbone: Backbone, tmp_path: Path
) -> None:
    learner = make_pmpo(mini_backbone, n_prompts=2, partition=(2, 1))  # replace, switch, carry
    graph = learner.visual_graph().eval()
    assert not any(p.requires_grad for p in graph.parameters())
    images = pixels(7, 64, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(graph.get_buffer("folded"), learner.block_prompts())
        folded = graph(images)
        assert torch.equal(folded, learner.encode_images(images))
        learner.prompts.add_(0.1)  # the exported graph no longer follows the learner
        assert torch.equal(graph(images), folded)
        assert not torch.allclose(learner.encode_images(images), folded)
    # ONNX and TorchScript at batch 1 and 7 within 1e-4 of eager, or ExportParityError
    figures = export_visual_graph(graph, tmp_path, mini_backbone.preprocess.size, tolerance=1e-4)
    assert set(figures) == {"onnx", "torchscript", "tolerance"}


def test_a_short_run_on_the_synthetic_task_lowers_the_loss(tmp_path: Path) -> None:
    losses = tiny_run_losses("pmpo", tmp_path, epochs=3)
    assert len(losses) == 3
    assert losses[-1] < losses[0]
