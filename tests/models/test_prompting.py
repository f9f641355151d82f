"""The shared prompted encoders: parity with open_clip, and the insert/replace/carry mechanics."""

from __future__ import annotations

import copy

import pytest
import torch

from promptserve.models.backbone import Backbone, load_backbone
from promptserve.models.prompting import (
    PLACEHOLDER,
    PromptedTextEncoder,
    PromptedVisionEncoder,
    VisionPrompts,
    replace_slots,
)
from tests.numerics import RTOL_FLOAT64, assert_close

TEXTS = ["a photo of a red star.", "a blue outlined hexagon on a striped background", "cat"]


def encoders(backbone: Backbone) -> tuple[PromptedTextEncoder, PromptedVisionEncoder]:
    return PromptedTextEncoder(backbone.text_tower()), PromptedVisionEncoder(
        backbone.vision_tower()
    )


def assert_parity(backbone: Backbone, batch: int) -> None:
    """The same function as open_clip's, so compared in float64 (on a copy of the backbone)."""
    backbone = copy.deepcopy(backbone)
    backbone.model.double()
    text, vision = encoders(backbone)
    ids = backbone.tokenize(TEXTS)
    size = backbone.preprocess.size
    pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close(text.encode_ids(ids), backbone.model.encode_text(ids), RTOL_FLOAT64)
        pixels = pixels.double()
        assert_close(vision(pixels), backbone.model.encode_image(pixels), RTOL_FLOAT64)


def test_parity_with_open_clip_on_tiny(tiny_backbone: Backbone) -> None:
    assert_parity(tiny_backbone, batch=4)


@pytest.mark.slow
def test_parity_with_open_clip_on_random_vit_b16() -> None:
    assert_parity(load_backbone("ViT-B-16"), batch=2)


def test_replace_slots_is_a_concatenation() -> None:
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    new = torch.full((2, 3), -1.0)
    out = replace_slots(x, slice(1, 3), new)
    assert out.shape == (2, 5, 3)
    assert torch.equal(out[:, 1:3], new.expand(2, -1, -1))
    assert torch.equal(out[:, [0, 3, 4]], x[:, [0, 3, 4]])
    inserted = replace_slots(x, slice(1, 1), new)
    assert inserted.shape == (2, 7, 3)
    assert torch.equal(inserted[:, 3:], x[:, 1:])


@pytest.mark.parametrize("position", ["after_cls", "end"])
def test_vision_prompts_are_inserted_and_carried(tiny_backbone: Backbone, position: str) -> None:
    _, vision = encoders(tiny_backbone)
    prompts = VisionPrompts(tokens=torch.randn(3, vision.width), position=position)  # type: ignore[arg-type]
    pixels = torch.randn(2, 3, 32, 32)
    record: list[torch.Tensor] = []
    with torch.no_grad():
        out = vision.run(pixels, prompts, record=record)
    n = 1 + vision.tower.num_patches
    assert out.shape == (2, n + 3, vision.width)
    slots = vision.prompt_slots(prompts)
    assert slots == (slice(1, 4) if position == "after_cls" else slice(n, n + 3))
    # block 0 sees the raw prompt tokens (they skip ln_pre); later blocks see carried outputs
    assert torch.allclose(record[0][:, slots], prompts.tokens.expand(2, -1, -1))
    assert not torch.allclose(record[1][:, slots], prompts.tokens.expand(2, -1, -1))


def test_vision_hook_replaces_slots_before_every_later_block(tiny_backbone: Backbone) -> None:
    _, vision = encoders(tiny_backbone)
    bank = torch.randn(vision.num_blocks, 2, vision.width)
    calls: list[int] = []

    def hook(index: int, x: torch.Tensor, slots: slice) -> torch.Tensor:
        calls.append(index)
        return bank[index]

    prompts = VisionPrompts(tokens=bank[0], position="end", hook=hook)
    record: list[torch.Tensor] = []
    with torch.no_grad():
        vision.run(torch.randn(3, 3, 32, 32), prompts, record=record)
    assert calls == list(range(1, vision.num_blocks))
    slots = vision.prompt_slots(prompts)
    for index, x in enumerate(record):
        assert torch.equal(x[:, slots], bank[index].expand(3, -1, -1))


def test_prompts_through_ln_pre_are_normalised(tiny_backbone: Backbone) -> None:
    _, vision = encoders(tiny_backbone)
    tokens = torch.randn(2, vision.width) * 10
    record: list[torch.Tensor] = []
    with torch.no_grad():
        vision.run(
            torch.randn(1, 3, 32, 32), VisionPrompts(tokens, through_ln_pre=True), record=record
        )
    expected = vision.tower.ln_pre(tokens)
    assert_close(record[0][0, -2:], expected)


def test_text_prefix_states_equal_full_sequence_states(tiny_backbone: Backbone) -> None:
    """The causal mask lets methods compute class-independent context states once (an exact
    claim: float64, on a copy of the encoder)."""
    text = copy.deepcopy(encoders(tiny_backbone)[0]).double()
    context = torch.randn(4, text.width, dtype=torch.float64)
    tokens = text.class_tokens(["red star", "a much longer class name here"], 4)
    full: list[torch.Tensor] = []
    prefix: list[torch.Tensor] = []
    with torch.no_grad():
        text.run(tokens.with_context(context), record=full)
        text.run(tokens.with_context(context)[:1, :5], record=prefix)
    for a, b in zip(full, prefix, strict=True):
        assert_close(a[:, :5], b.expand(2, -1, -1), RTOL_FLOAT64)


def test_class_tokens_shift_the_eot_index(tiny_backbone: Backbone) -> None:
    text, _ = encoders(tiny_backbone)
    plain = tiny_backbone.tokenize(["red star."])
    tokens = text.class_tokens(["red star"], 6)
    eot = int(plain.argmax(-1)[0]) + 6
    assert int(tokens.eot_index[0]) == eot
    # the sequence ends at the EOT, or where a method's hooks still read
    assert tokens.with_context(torch.zeros(6, text.width)).shape == (1, eot + 1, text.width)
    longer = text.class_tokens(["red star"], 6, min_length=eot + 4)
    assert longer.with_context(torch.zeros(6, text.width)).shape == (1, eot + 4, text.width)


def test_prompts_cut_at_the_last_eot_give_the_whole_contexts_features(
    tiny_backbone: Backbone,
) -> None:
    backbone = copy.deepcopy(tiny_backbone)
    backbone.model.double()  # the same function over fewer positions: compared in float64
    text, _ = encoders(backbone)
    names = ["red star", "a large and very dark blue square on a grey ground"]
    tokens = text.class_tokens(names, 4)
    context = torch.randn(4, text.width, dtype=torch.float64)
    whole = text.tokenize([f"{' '.join([PLACEHOLDER] * 4)} {name}." for name in names])
    cut = tokens.with_context(context)
    assert cut.shape[1] == int(tokens.eot_index.max()) + 1 < whole.shape[1]
    with torch.no_grad():
        suffix = text.tower.embed_tokens(whole)[:, 5:]
        uncut = torch.cat([tokens.prefix, context.expand(2, -1, -1), suffix], dim=1)
        assert_close(text(cut, tokens.eot_index), text(uncut, tokens.eot_index), RTOL_FLOAT64)


def test_text_hook_rewrites_the_context_slots(tiny_backbone: Backbone) -> None:
    text, _ = encoders(tiny_backbone)
    tokens = text.class_tokens(["red star", "cat"], 2)
    embeds = tokens.with_context(torch.randn(2, text.width))
    replacement = torch.randn(2, text.width)
    record: list[torch.Tensor] = []
    with torch.no_grad():
        base = text(embeds, tokens.eot_index)
        hooked = text.run(
            embeds, hook=lambda i, x, s: replacement, slots=tokens.context_slots, record=record
        )
    assert torch.equal(record[1][:, 1:3], replacement.expand(2, -1, -1))
    assert not torch.allclose(text.tower.pool(hooked, tokens.eot_index), base)
