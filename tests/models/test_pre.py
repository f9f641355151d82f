"""PRE: the reparameterised context, its export as plain coop, and a learning check.

The generic contract (shapes, gradients, per-sample semantics, round trips, export parity) runs
for `pre` in the registry suites of test_methods.py and test_artifact.py.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from promptserve.models.artifact import publish_classifier
from promptserve.models.backbone import Backbone
from promptserve.models.labels import load_learner
from promptserve.models.methods import create_method
from promptserve.models.methods.coop import CoOpLearner
from promptserve.models.methods.pre import PRELearner
from tests.helpers import NAMES, pixels, reference_encode, tiny_run_losses
from tests.numerics import RTOL_EXPORT, assert_close


def make_pre(backbone: Backbone, seed: int = 0) -> PRELearner:
    torch.manual_seed(seed)
    learner = create_method("pre", backbone).eval()
    assert isinstance(learner, PRELearner)
    with torch.no_grad():  # move off the init, as training would
        for p in learner.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    return learner


def test_context_starts_from_a_photo_of_a_and_encoder_is_a_bilstm(tiny_backbone: Backbone) -> None:
    learner = create_method("pre", tiny_backbone)
    assert isinstance(learner, PRELearner)
    ids = tiny_backbone.tokenize(["a photo of a"])
    words = learner.text.tower.embed_tokens(ids)[0, 1:5]
    assert torch.equal(learner.ctx.detach(), words)
    lstm = learner.encoder.lstm
    width = learner.text.width
    assert (lstm.input_size, lstm.hidden_size, lstm.num_layers) == (width, width // 2, 1)
    assert lstm.bidirectional


def test_context_is_the_encoder_output_plus_the_residual(tiny_backbone: Backbone) -> None:
    learner = make_pre(tiny_backbone)
    with torch.no_grad():
        out, _ = learner.encoder.lstm(learner.ctx.unsqueeze(1))  # the same sequence, batched
        context = learner.context()
    assert context.shape == learner.ctx.shape
    assert_close(context, out.squeeze(1) + learner.ctx)
    assert not torch.allclose(context, learner.ctx)


def test_encoder_weights_move_the_classes_and_nothing_on_the_vision_side(
    tiny_backbone: Backbone,
) -> None:
    learner = make_pre(tiny_backbone)
    images = pixels(5)
    with torch.no_grad():
        classes_before = learner.encode_classes(NAMES)
        images_before = learner.encode_images(images)
        for p in learner.encoder.parameters():
            p.add_(0.1)
        classes_after = learner.encode_classes(NAMES)
        images_after = learner.encode_images(images)
        unprompted = F.normalize(reference_encode(tiny_backbone.vision_tower(), images), dim=-1)
    assert (classes_after - classes_before).abs().max() > 1e-3
    assert torch.equal(images_after, images_before)
    assert_close(images_after, unprompted)


def test_inference_is_coop_with_the_fused_context(tiny_backbone: Backbone) -> None:
    learner = make_pre(tiny_backbone)
    coop = create_method("coop", tiny_backbone, {"ctx_init": "a photo of a"})
    assert isinstance(coop, CoOpLearner)
    with torch.no_grad():
        coop.ctx.copy_(learner.context())
        assert torch.equal(coop.encode_classes(NAMES), learner.encode_classes(NAMES))


def test_artifact_fuses_the_context_and_keeps_the_encoder(
    tiny_backbone: Backbone, tmp_path: Path
) -> None:
    learner = make_pre(tiny_backbone)
    path = publish_classifier(learner, NAMES, tmp_path, "pre", format_version=1)
    learned = load_file(str(path / "learner.safetensors"))
    assert "ctx" in learned
    assert any(key.startswith("encoder.lstm.") for key in learned)
    with torch.no_grad():
        fused = load_file(str(path / "classes.safetensors"))["embeddings"]
        assert torch.equal(fused, learner.encode_classes(NAMES))
        # new names from the stored C and Φ, as base-to-novel needs
        novel = ["pink ring", "cyan cross"]
        restored = load_learner(path)
        assert torch.equal(restored.encode_classes(novel), learner.encode_classes(novel))
    # the exported visual graph is the unprompted encoder
    session = ort.InferenceSession(str(path / "visual.onnx"), providers=["CPUExecutionProvider"])
    images = pixels(7, seed=2)
    (out,) = session.run(None, {"pixels": images.numpy()})
    with torch.no_grad():
        unprompted = F.normalize(reference_encode(tiny_backbone.vision_tower(), images), dim=-1)
    assert_close(out, unprompted, RTOL_EXPORT)  # ONNX Runtime against torch


def test_a_short_run_on_the_synthetic_task_lowers_the_loss(tmp_path: Path) -> None:
    losses = tiny_run_losses("pre", tmp_path, epochs=3)
    assert len(losses) == 3
    assert losses[-1] < losses[0]
