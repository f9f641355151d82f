"""SEP-specific checks; the registry suites (test_methods, test_artifact) cover the contract."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor

from promptserve.models.artifact import publish_classifier
from promptserve.models.backbone import Backbone
from promptserve.models.classifier import load_classifier
from promptserve.models.errors import ConfigError
from promptserve.models.labels import load_learner
from promptserve.models.methods import Batch, create_method, make_config
from promptserve.models.methods import sep as sep_module
from promptserve.models.methods.sep import SEPLearner, TokenFusion, salient_indices, select_salient
from promptserve.models.prompting import VisionPrompts
from tests.helpers import NAMES, perturb, pixels, reference_encode
from tests.numerics import RTOL_EXPORT, assert_close


def make(backbone: Backbone, seed: int = 0, **overrides: Any) -> SEPLearner:
    torch.manual_seed(seed)
    learner = create_method("sep", backbone, overrides)
    assert isinstance(learner, SEPLearner)
    perturb(learner, seed=seed + 1)  # move off the initial values so the TFMs matter
    return learner.eval()


# --- structure ------------------------------------------------------------------------------


def test_one_fusion_module_per_later_block_with_gates_at_three_quarters(
    tiny_backbone: Backbone,
) -> None:
    learner = create_method("sep", tiny_backbone)
    assert isinstance(learner, SEPLearner)
    assert len(learner.tfm_text) == learner.text.num_blocks - 1
    assert len(learner.tfm_vision) == learner.vision.num_blocks - 1
    for tfm in [*learner.tfm_text, *learner.tfm_vision]:
        assert tfm.s1.item() == tfm.s2.item() == 0.75
        assert all(layer.bias is None for layer in tfm.mlp if isinstance(layer, torch.nn.Linear))
        assert tfm.mlp[0].out_features == 256
    assert learner.ctx_text.shape == (6, learner.text.width)
    assert learner.ctx_vision.shape == (4, learner.vision.width)


def test_describe_counts_both_vision_passes(tiny_backbone: Backbone) -> None:
    learner = create_method("sep", tiny_backbone)
    patches = learner.vision.tower.num_patches  # 16 on tiny
    report = learner.describe()
    assert report["tokens_per_image"] == (1 + patches + 4) + (1 + patches)
    assert report["learnable_parameters"] == sum(
        p.numel() for p in learner.parameters() if p.requires_grad
    )
    assert report["training_only_parameters"] == 0


@pytest.mark.parametrize(
    "overrides", [{"n_ctx_vision": 18}, {"n_ctx_vision": 0}, {"n_ctx_text": 16}, {"n_ctx_text": 0}]
)
def test_lengths_beyond_the_backbone_are_rejected(
    tiny_backbone: Backbone, overrides: dict[str, int]
) -> None:
    with pytest.raises(ConfigError, match="n_ctx"):
        create_method("sep", tiny_backbone, overrides)


def test_presets_build() -> None:
    assert make_config("sep", preset="imagenet").batch_size == 128  # type: ignore[attr-defined]
    mini = make_config("sep", preset="mini")
    assert mini.optimizer == "adam"
    assert mini.epochs < 50


# --- token selection and fusion are per sample ----------------------------------------------


def test_top_k_is_per_row_largest_first_ties_to_the_lower_index() -> None:
    energy = torch.tensor(
        [
            [0.0, 5.0, 1.0, 5.0, 2.0, 0.0],  # a tie at 5: position 1 before 3
            [3.0, 0.0, 0.0, 0.0, 3.0, 3.0],  # a tie across the cut: the lower positions win
        ]
    )
    assert salient_indices(energy, 3).tolist() == [[1, 3, 4], [0, 4, 5]]
    assert salient_indices(torch.zeros(1, 9), 4).tolist() == [[0, 1, 2, 3]]
    random = torch.rand(50, 197, generator=torch.Generator().manual_seed(0))
    assert torch.equal(salient_indices(random, 4), random.topk(4, dim=1).indices)


def test_selection_of_two_images_in_one_batch_equals_each_alone() -> None:
    tokens = 0.1 + 0.01 * torch.randn(2, 10, 8, generator=torch.Generator().manual_seed(0))
    tokens[0, 7], tokens[0, 2] = 6.0, 4.0  # different salient positions in the two images,
    tokens[1, 5], tokens[1, 0] = 12.0, 9.0  # and a louder second image
    together = select_salient(tokens, 2)
    torch.testing.assert_close(together[0], tokens[0, [7, 2]], atol=0, rtol=0)
    torch.testing.assert_close(together[1], tokens[1, [5, 0]], atol=0, rtol=0)
    for row in range(2):
        assert torch.equal(together[row], select_salient(tokens[row : row + 1], 2)[0])
    # the released selection (one top-k of the batch-averaged energy) gives image 0 the
    # positions of image 1
    assert set(tokens.pow(2).mean(dim=(0, 2)).topk(2).indices.tolist()) == {0, 5}


def test_images_with_different_salient_tokens_embed_as_alone(
    tiny_backbone: Backbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    learner = make(tiny_backbone)
    chosen: list[Tensor] = []
    original: Callable[[Tensor, int], Tensor] = sep_module.salient_indices

    def spy(energy: Tensor, k: int) -> Tensor:
        chosen.append(original(energy, k))
        return chosen[-1]

    monkeypatch.setattr(sep_module, "salient_indices", spy)
    images = torch.cat([pixels(1, seed=11), pixels(1, seed=12) * 3 + 1])
    with torch.no_grad():
        together = learner.encode_images(images)
        assert any(set(i[0].tolist()) != set(i[1].tolist()) for i in chosen)  # rows differ
        for row in range(2):
            alone = learner.encode_images(images[row : row + 1])[0]
            assert_close(together[row], alone)


def test_fusion_attends_within_each_sample() -> None:
    torch.manual_seed(0)
    tfm = TokenFusion(width=16, heads=2, hidden=8, gate_init=0.75).eval()
    prompts, reps = torch.randn(3, 4, 16), torch.randn(3, 4, 16)
    with torch.no_grad():
        together = tfm(prompts, reps)
        other = tfm(prompts, torch.cat([reps[:1], torch.randn(2, 4, 16)]))
        for row in range(3):
            alone = tfm(prompts[row : row + 1], reps[row : row + 1])[0]
            assert_close(together[row], alone)
    assert_close(together[0], other[0])


def test_text_fusion_reads_the_tokens_after_the_context(tiny_backbone: Backbone) -> None:
    learner = make(tiny_backbone)
    seen: list[tuple[Tensor, Tensor, Tensor]] = []
    learner.tfm_text[0].register_forward_hook(
        lambda module, args, out: seen.append((args[0], args[1], out))
    )
    tokens = learner.class_tokens(NAMES)
    record: list[Tensor] = []
    with torch.no_grad():
        learner.text.run(
            tokens.with_context(learner.ctx_text),
            hook=learner._fuse_text,
            slots=tokens.context_slots,
            record=record,
        )
    (_, reps, out) = seen[0]
    torch.testing.assert_close(reps, record[1][:, 7:13], atol=0, rtol=0)  # name, '.', EOT, ...
    torch.testing.assert_close(out, record[1][:, 1:7], atol=0, rtol=0)  # into the context slots


def test_vision_fusion_reads_the_salient_tokens_of_its_image(tiny_backbone: Backbone) -> None:
    learner = make(tiny_backbone)
    seen: list[tuple[Tensor, Tensor, Tensor]] = []
    learner.tfm_vision[0].register_forward_hook(
        lambda module, args, out: seen.append((args[0], args[1], out))
    )
    prompts = VisionPrompts(
        learner.ctx_vision, position="end", through_ln_pre=True, hook=learner._fuse_vision
    )
    record: list[Tensor] = []
    with torch.no_grad():
        learner.vision.run(pixels(3), prompts, record=record)
    (_, reps, out) = seen[0]
    patches = 1 + learner.vision.tower.num_patches
    torch.testing.assert_close(reps, select_salient(record[1][:, :patches], 4), atol=0, rtol=0)
    torch.testing.assert_close(out, record[1][:, patches:], atol=0, rtol=0)


def test_class_embedding_depends_only_on_its_own_name(tiny_backbone: Backbone) -> None:
    learner = make(tiny_backbone)
    with torch.no_grad():
        alone = learner.encode_classes(["red star"])[0]
        for others in (["blue circle"], ["pink hexagon", "a much longer class name here"], NAMES):
            names = [*others, "red star"] if "red star" not in others else others
            inside = learner.encode_classes(names)[names.index("red star")]
            assert_close(alone, inside)


# --- fused features and the loss ------------------------------------------------------------


def test_frozen_halves_are_the_backbone_and_the_template(tiny_backbone: Backbone) -> None:
    learner = make(tiny_backbone)
    zeroshot = create_method("zeroshot", tiny_backbone)
    images = pixels(3)
    with torch.no_grad():
        fused_images, frozen_images = learner.image_features(images)
        fused_classes, frozen_classes = learner.class_features(NAMES)
        reference = F.normalize(reference_encode(learner.vision.tower, images), dim=-1)
        assert_close(frozen_images, reference)
        torch.testing.assert_close(frozen_classes, zeroshot.encode_classes(NAMES))
    # the fused features lie between the frozen and the prompted ones, not on the frozen ones
    assert 0.0 < float((fused_images * frozen_images).sum(-1).min()) < 1.0
    assert 0.0 < float((fused_classes * frozen_classes).sum(-1).min()) < 1.0


def test_loss_is_the_published_sum(tiny_backbone: Backbone) -> None:
    learner = make(tiny_backbone)
    images, labels = pixels(4), torch.tensor([0, 1, 2, 3])
    learner.prepare_training(NAMES, [(images, labels)])
    with torch.no_grad():
        f, f0 = learner.image_features(images)
        t, t0 = learner.class_features(NAMES)
        w = F.normalize(learner.head, dim=-1)  # type: ignore[arg-type]
        expected = (
            F.cross_entropy(learner.logit_scale * f @ t.t(), labels)
            + 8 * (1 - F.cosine_similarity(t, t0).mean())
            + 6 * (1 - F.cosine_similarity(f, f0).mean())
            + 0.5 * F.cross_entropy(10 * f @ w.t(), labels)
            + 0.5 * F.cross_entropy(10 * f0 @ w.t(), labels)
        )
        actual = learner.loss(Batch(images, labels, NAMES))
    torch.testing.assert_close(actual, expected)
    with pytest.raises(ValueError, match="label set"):
        learner.loss(Batch(images, labels, NAMES[::-1]))


# --- the training-only head -----------------------------------------------------------------


def test_head_starts_at_the_class_means_of_frozen_features(tiny_backbone: Backbone) -> None:
    learner = make(tiny_backbone)
    images, labels = pixels(6), torch.tensor([0, 0, 1, 2, 2, 2])  # no image of class 3
    learner.prepare_training(NAMES, [(images[:4], labels[:4]), (images[4:], labels[4:])])
    assert learner.head is not None
    with torch.no_grad():
        frozen = F.normalize(learner.vision(images), dim=-1)
        template = learner.class_features(NAMES)[1]
    means = [frozen[labels == c].mean(0) for c in range(3)]
    expected = F.normalize(torch.stack([*means, template[3]]), dim=-1)
    assert_close(learner.head.detach(), expected)

    learner.prepare_training(NAMES, None)  # no images at hand: the zero-shot text embeddings
    assert_close(learner.head.detach(), template)


def test_head_trains_but_stays_out_of_the_learned_state(tiny_backbone: Backbone) -> None:
    learner = make(tiny_backbone)
    learner.train()
    learner.prepare_training(NAMES, [(pixels(4), torch.tensor([0, 1, 2, 3]))])
    assert learner.head is not None
    assert any(p is learner.head for p in learner.trainable_parameters())
    learner.loss(Batch(pixels(4, seed=1), torch.tensor([3, 2, 1, 0]), NAMES)).backward()
    grad = learner.head.grad
    assert grad is not None
    assert grad.abs().sum() > 0
    assert "head" not in learner.learned_state_dict()
    assert learner.describe()["training_only_parameters"] == len(NAMES) * grad.shape[1]
    fresh = make(tiny_backbone, seed=5)
    fresh.load_learned_state_dict(learner.learned_state_dict())  # strict, without the head
    assert fresh.head is None


def test_artifact_holds_both_passes_with_a_top_k_per_fusion_and_no_head(
    tiny_backbone: Backbone, tmp_path: Path
) -> None:
    learner = make(tiny_backbone)
    learner.prepare_training(NAMES, [(pixels(4), torch.tensor([0, 1, 2, 3]))])
    path = publish_classifier(learner, NAMES, tmp_path, "sep", format_version=1)
    assert "head" not in load_file(str(path / "learner.safetensors"))
    # both exported graphs give the eager learner's embeddings, measured here from the files
    # (the manifest's parity figures are the exporter's own gate)
    images = pixels(7, learner.preprocess.size, seed=3)
    with torch.no_grad():
        expected = learner.eval().encode_images(images)
    for engine in ("onnx", "torchscript"):
        engine_out = load_classifier(path, engine=engine).embed(images)
        assert_close(engine_out, expected, rtol=RTOL_EXPORT, what=f"sep {engine} vs eager")
    graph = onnx.load(str(path / "visual.onnx"))
    ops = [node.op_type for node in graph.graph.node]
    ops += [node.op_type for function in graph.functions for node in function.node]
    fusions = learner.vision.num_blocks - 1
    assert ops.count("TopK") == ops.count("GatherElements") == fusions
    restored = load_learner(path)
    assert isinstance(restored, SEPLearner)
    assert restored.head is None
    with torch.no_grad():
        assert torch.equal(restored.encode_images(pixels(2)), learner.encode_images(pixels(2)))


# --- learning -------------------------------------------------------------------------------


def _train(backbone: str, data: str, tmp_path: Path, shots: int, **overrides: Any) -> Any:
    from promptserve.training.api import TrainRequest, fit_learner

    request = TrainRequest(
        method="sep",
        data=data,
        store=tmp_path,
        name="sep",
        backbone=backbone,
        shots=shots,
        preset="mini",
        overrides=overrides,
    )
    return fit_learner(request)


def test_short_training_on_colour_shapes_lowers_the_loss(tmp_path: Path) -> None:
    """The 32 base classes, 2 shots each, on the random-init tiny backbone (~7 CPU s)."""
    data = "synthetic:color-shape-base?n=2&size=32"
    fitted = _train("tiny", data, tmp_path, 2, epochs=4, warmup_epochs=0, lr=0.005)
    assert fitted.learner.head is not None  # the entry point hands its loader to the head
    losses = fitted.result.losses
    assert losses[-1] < 0.95 * losses[0]
