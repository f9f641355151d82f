"""The shared prompted encoders: every method's prompts go through this one mechanism.

A method never loops over transformer blocks itself. It says which tokens go where:

* text: token embeddings with the learned context already in its slots (see `ClassTokens`),
  plus an optional `BlockHook` that rewrites the context slots before blocks 1..L-1;
* vision: prompt tokens inserted before block 0 right after CLS or at the end of the sequence,
  optionally through `ln_pre`, plus an optional `BlockHook` that replaces them before later
  blocks (returning None carries the block's own output).

With no prompts both encoders compute exactly what open_clip's `encode_text` / `encode_image` do.
The text encoder also holds the text helpers every method shares: tokenizing with the backbone's
tokenizer (the tower owns it), a context initialised from words (`init_context`) and the
hand-crafted template embeddings (`encode_templates`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promptserve.models.errors import ConfigError
from promptserve.models.towers import TextTower, VisionTower

BlockHook = Callable[[int, Tensor, slice], Tensor | None]
"""``hook(l, x, slots)`` runs before block ``l >= 1``; ``x`` is that block's input [B, L, W] (the
previous block's output) and ``x[:, slots]`` the prompt slots. It returns the new slot content,
[B, M, W] or [M, W] (broadcast over the batch), or None to carry the slots unchanged."""

PLACEHOLDER = "X"  # stands in for each context token when class prompts are tokenised


def replace_slots(x: Tensor, slots: slice, content: Tensor) -> Tensor:
    """x with x[:, slots] replaced by content; a concatenation, so it traces and exports."""
    content = content.to(x.dtype).expand(x.shape[0], -1, -1)  # [B, M, W]
    return torch.cat([x[:, : slots.start], content, x[:, slots.stop :]], dim=1)


def run_blocks(
    blocks: nn.ModuleList,
    x: Tensor,
    *,
    slots: slice,
    hook: BlockHook | None = None,
    attn_mask: Tensor | None = None,
    record: list[Tensor] | None = None,
) -> Tensor:
    """Run the frozen blocks, letting `hook` rewrite the prompt slots before blocks 1..L-1.

    If `record` is given, the input of every block (after any rewrite) is appended to it.
    """
    for index, block in enumerate(blocks):
        if hook is not None and index > 0:
            content = hook(index, x, slots)
            if content is not None:
                x = replace_slots(x, slots, content)
        if record is not None:
            record.append(x)
        x = block(x, attn_mask=attn_mask)
    return x


def used_length(eot_index: Tensor) -> int:
    """How many leading tokens of a batch of sequences reach their pooled features."""
    return int(eot_index.max()) + 1


@dataclass(frozen=True)
class ClassTokens:
    """Tokenised class prompts ``[SOS, X * n_ctx, name tokens, '.', EOT, pad]`` split around the
    context slots, so a method builds its input as ``cat([prefix, context, suffix])``.

    The sequence ends at the last class's EOT (`TextPrompter.class_tokens`), not at the
    backbone's full context: under the causal mask no later position reaches a pooled feature,
    and on a 77-token CLIP that is most of the text tower's work."""

    prefix: Tensor  # [C, 1, Dt] the SOS embedding
    suffix: Tensor  # [C, T' - 1 - n_ctx, Dt] name, '.', EOT, padding embeddings
    eot_index: Tensor  # [C] where the EOT token sits in the full sequence
    n_ctx: int

    @property
    def context_slots(self) -> slice:
        return slice(1, 1 + self.n_ctx)

    def with_context(self, context: Tensor) -> Tensor:
        """[n_ctx, Dt] or [C, n_ctx, Dt] context -> [C, T, Dt] token embeddings."""
        context = context.to(self.prefix.dtype).expand(self.prefix.shape[0], -1, -1)
        return torch.cat([self.prefix, context, self.suffix], dim=1)


class _PromptedTower(nn.Module):
    def __init__(self, tower: TextTower | VisionTower) -> None:
        super().__init__()
        self.tower = tower

    @property
    def width(self) -> int:
        return self.tower.width

    @property
    def num_blocks(self) -> int:
        return len(self.tower.blocks)


class PromptedTextEncoder(_PromptedTower):
    """Frozen text tower over token embeddings with context slots."""

    tower: TextTower

    def __init__(self, tower: TextTower) -> None:
        super().__init__(tower)

    def tokenize(self, texts: list[str]) -> Tensor:
        """[N] texts -> [N, T] token ids, by the backbone's tokenizer (the tower owns it)."""
        return self.tower.tokenize(texts)

    def class_tokens(self, names: list[str], n_ctx: int, min_length: int = 0) -> ClassTokens:
        """Tokenise ``"X X .. X {name}."`` for each name and embed it (CoOp's layout), up to
        the last EOT, or `min_length` tokens for a method whose hooks read positions past it."""
        placeholder = " ".join([PLACEHOLDER] * n_ctx)
        texts = [f"{placeholder} {name}." if n_ctx else f"{name}." for name in names]
        ids = self.tokenize(texts)  # [C, T]
        eot_index = self.tower.eot_index(ids)
        ids = ids[:, : max(used_length(eot_index), min_length)]  # [C, T']
        with torch.no_grad():
            embeds = self.tower.embed_tokens(ids)  # [C, T', Dt]
        return ClassTokens(
            prefix=embeds[:, :1],
            suffix=embeds[:, 1 + n_ctx :],
            eot_index=eot_index,
            n_ctx=n_ctx,
        )

    def forward(
        self,
        embeds: Tensor,
        eot_index: Tensor,
        *,
        hook: BlockHook | None = None,
        slots: slice = slice(1, 1),
    ) -> Tensor:
        """[C, T, Dt] token embeddings (no positional embedding) -> [C, D] features."""
        x = self.run(embeds, hook=hook, slots=slots)
        return self.tower.pool(x, eot_index)

    def run(
        self,
        embeds: Tensor,
        *,
        hook: BlockHook | None = None,
        slots: slice = slice(1, 1),
        record: list[Tensor] | None = None,
    ) -> Tensor:
        """[C, T', Dt] embeddings of any prefix length T' <= T -> last-block output [C, T', Dt].

        The causal mask means a prefix's states equal the same positions of the full sequence,
        which lets a method compute class-independent context states once.
        """
        length = embeds.shape[1]
        x = embeds.to(self.tower.dtype) + self.tower.positional_embedding[:length].to(
            self.tower.dtype
        )
        return run_blocks(
            self.tower.blocks,
            x,
            slots=slots,
            hook=hook,
            attn_mask=self.tower.mask(length),
            record=record,
        )

    def encode_ids(self, ids: Tensor) -> Tensor:
        """[C, T] token ids -> [C, D] features: open_clip's `encode_text`, run up to the last
        EOT only (the positions after it reach no pooled feature)."""
        eot_index = self.tower.eot_index(ids)
        return self(self.tower.embed_tokens(ids[:, : used_length(eot_index)]), eot_index)

    def encode_templates(self, names: list[str], templates: tuple[str, ...]) -> Tensor:
        """[C] names -> [C, D]: the normalised mean of the normalised features of every
        hand-crafted template (``"a photo of a {}."``) filled with each name."""
        feats = []
        for template in templates:
            ids = self.tokenize([template.format(n) for n in names])  # [C, T]
            feats.append(F.normalize(self.encode_ids(ids), dim=-1))  # [C, D]
        return F.normalize(torch.stack(feats).mean(dim=0), dim=-1)

    def init_context(self, n_ctx: int, init: str | None, std: float) -> nn.Parameter:
        """A learnable [M, Dt] context: the token embeddings of the words of `init` (M is their
        token count), or M = `n_ctx` tokens drawn from N(0, std^2) when `init` is None."""
        if init is None:
            if n_ctx < 1:
                raise ConfigError("n_ctx must be at least 1")
            return nn.Parameter(torch.randn(n_ctx, self.width) * std)
        ids = self.tokenize([init])  # [1, T]
        n_words = int(self.tower.eot_index(ids)[0]) - 1
        with torch.no_grad():
            embeds = self.tower.embed_tokens(ids)[0, 1 : 1 + n_words]  # [M, Dt]
        return nn.Parameter(embeds.float().clone())


@dataclass(frozen=True)
class VisionPrompts:
    """Prompt tokens for the vision tower and how they move through it."""

    tokens: Tensor  # [M, Dv] shared or [B, M, Dv] per image: the slots entering block 0
    position: Literal["after_cls", "end"] = "end"
    through_ln_pre: bool = False  # True: prompts are appended before ln_pre and normalised by it
    hook: BlockHook | None = None  # rewrites the slots before blocks 1..L-1; None carries them


class PromptedVisionEncoder(_PromptedTower):
    """Frozen ViT that inserts, replaces or carries prompt slots block by block."""

    tower: VisionTower

    def __init__(self, tower: VisionTower) -> None:
        super().__init__(tower)

    def prompt_slots(self, prompts: VisionPrompts) -> slice:
        """Sequence positions the prompts occupy."""
        count = prompts.tokens.shape[-2]
        start = 1 if prompts.position == "after_cls" else 1 + self.tower.num_patches
        return slice(start, start + count)

    def forward(self, pixels: Tensor, prompts: VisionPrompts | None = None) -> Tensor:
        """[B, 3, S, S] -> [B, D] unnormalised features."""
        return self.tower.pool(self.run(pixels, prompts))

    def run(
        self,
        pixels: Tensor,
        prompts: VisionPrompts | None = None,
        record: list[Tensor] | None = None,
    ) -> Tensor:
        """[B, 3, S, S] -> last-block output [B, 1 + N (+ M), Dv]."""
        x = self.tower.embed_patches(pixels)  # [B, 1 + N, Dv]
        if prompts is None:
            return run_blocks(
                self.tower.blocks, self.tower.ln_pre(x), slots=slice(0, 0), record=record
            )
        slots = self.prompt_slots(prompts)
        insert_at = slice(slots.start, slots.start)  # an empty slice: insertion, not replacement
        if prompts.through_ln_pre:
            x = self.tower.ln_pre(replace_slots(x, insert_at, prompts.tokens))
        else:
            x = replace_slots(self.tower.ln_pre(x), insert_at, prompts.tokens)
        return run_blocks(self.tower.blocks, x, slots=slots, hook=prompts.hook, record=record)
