"""Backbone loading: specs, local checkpoints, reproducible random init, offline failures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from promptserve.models.backbone import Backbone, load_backbone, parse_backbone_spec
from promptserve.models.errors import BackboneError


def test_specs_are_parsed() -> None:
    assert parse_backbone_spec("ViT-B-16:openai") == ("ViT-B-16", "openai", None)
    assert parse_backbone_spec("ViT-B-16") == ("ViT-B-16", None, None)
    assert parse_backbone_spec("tiny@/w/x.pt") == ("tiny", None, Path("/w/x.pt"))


def test_random_init_is_reproducible_and_frozen(tiny_backbone: Backbone) -> None:
    again = load_backbone("tiny")
    assert again.id.weights_sha256 == tiny_backbone.id.weights_sha256
    assert not any(p.requires_grad for p in again.model.parameters())
    assert not again.model.training
    assert again.preprocess.size == 32
    assert again.tokenize(["a red star"]).shape == (1, 32)


def test_the_embedded_mini_backbone_loads_its_weights() -> None:
    mini = load_backbone()  # the default
    assert mini.id.architecture == "mini"
    assert mini.id.pretrained == "mini.safetensors"
    assert mini.preprocess.size == 64


def test_a_local_checkpoint_loads(tmp_path: Path, tiny_backbone: Backbone) -> None:
    state = {k: v.clone() + 0.5 for k, v in tiny_backbone.model.state_dict().items()
             if k != "attn_mask"}  # fmt: skip
    path = tmp_path / "tiny-custom.safetensors"
    save_file(state, str(path))
    loaded = load_backbone(f"tiny@{path}")
    assert loaded.id.pretrained == path.name
    assert loaded.id.weights_sha256 != tiny_backbone.id.weights_sha256
    assert torch.equal(loaded.model.logit_scale, state["logit_scale"])


def test_missing_pretrained_weights_fail_fast_with_a_way_out() -> None:
    with pytest.raises(BackboneError) as err:
        load_backbone("ViT-B-16:openai", allow_download=False)
    message = str(err.value)
    assert "ViT-B-16@/path/to/" in message  # says how to point at a local checkpoint


def test_bad_specs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="unknown architecture"):
        load_backbone("NoSuchNet")
    with pytest.raises(BackboneError, match="does not exist"):
        load_backbone(f"tiny@{tmp_path / 'missing.safetensors'}")
    with pytest.raises(BackboneError, match="known tags"):
        load_backbone("ViT-B-16:no-such-tag", allow_download=False)
