"""The open_clip tower adapters: a CLIP's text and vision towers seen as embeddings -> blocks
-> pooled feature.

These two classes and `models.backbone` are the only code that touches open_clip internals; an
open_clip upgrade is absorbed here (the version is pinned in pyproject.toml). The prompting code
(`models.prompting`) reaches the towers only through them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn

from promptserve.models.errors import BackboneError

Tokenizer = Callable[[list[str]], Tensor]  # open_clip tokenizer: list[str] -> LongTensor [N, T]


class TextTower(nn.Module):
    """The text transformer of a CLIP, seen as tokens -> embeddings -> blocks -> pooled feature.

    It owns the backbone's tokenizer, so nothing above it passes one around.
    """

    def __init__(self, clip: Any, tokenizer: Tokenizer) -> None:
        super().__init__()
        if not hasattr(clip, "token_embedding") or not hasattr(clip, "transformer"):
            raise BackboneError(f"{type(clip).__name__} has no open_clip CLIP text tower")
        self.tokenizer = tokenizer
        self.token_embedding = clip.token_embedding
        self.positional_embedding = cast(Tensor, clip.positional_embedding)
        self.blocks = cast(nn.ModuleList, clip.transformer.resblocks)
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.pool_type: str = clip.text_pool_type
        self.width: int = clip.transformer.width
        self.heads: int = clip.transformer.resblocks[0].attn.num_heads
        self.context_length: int = clip.context_length

    @property
    def dtype(self) -> torch.dtype:
        return cast(torch.dtype, cast(Any, self.blocks[0]).mlp.c_fc.weight.dtype)

    def tokenize(self, texts: list[str]) -> Tensor:
        """[N] texts -> [N, T] token ids on the tower's device."""
        return self.tokenizer(texts).to(self.positional_embedding.device)

    def embed_tokens(self, ids: Tensor) -> Tensor:
        """[N, T] token ids -> [N, T, Dt] token embeddings (no positional embedding)."""
        return cast(Tensor, self.token_embedding(ids)).to(self.dtype)

    def mask(self, length: int) -> Tensor | None:
        """The causal mask for a sequence of `length` tokens (a prefix of the full one)."""
        mask = cast(Tensor | None, self.attn_mask)
        return None if mask is None else mask[:length, :length]

    def pool(self, x: Tensor, eot_index: Tensor) -> Tensor:
        """[N, T, Dt] last-block output -> [N, D] projected feature, pooled at `eot_index`."""
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), eot_index]
        if isinstance(self.text_projection, nn.Linear):
            return cast(Tensor, self.text_projection(pooled))
        if self.text_projection is not None:
            return pooled @ self.text_projection
        return pooled

    def eot_index(self, ids: Tensor) -> Tensor:
        """Where open_clip pools a tokenised sequence (its highest id, the EOT token)."""
        if self.pool_type != "argmax":
            raise BackboneError(f"text pooling {self.pool_type!r} is not supported (argmax only)")
        return ids.argmax(dim=-1)


class VisionTower(nn.Module):
    """The ViT of a CLIP, seen as pixels -> tokens -> blocks -> pooled feature."""

    def __init__(self, visual: Any) -> None:
        from open_clip.transformer import VisionTransformer  # on first use, as models.backbone

        super().__init__()
        if not isinstance(visual, VisionTransformer):
            raise BackboneError(
                f"prompt learning needs a ViT vision tower, got {type(visual).__name__}"
            )
        if visual.attn_pool is not None or visual.pool_type != "tok":
            raise BackboneError("only class-token pooled ViTs are supported")
        self.visual = visual
        self.blocks = cast(nn.ModuleList, visual.transformer.resblocks)
        self.width: int = visual.transformer.width
        self.heads: int = visual.transformer.resblocks[0].attn.num_heads
        self.patch_size: int = int(visual.patch_size[0])
        self.image_size: int = int(visual.image_size[0])
        self.num_patches: int = (self.image_size // self.patch_size) ** 2

    @property
    def dtype(self) -> torch.dtype:
        return cast(torch.dtype, self.visual.conv1.weight.dtype)

    def embed_patches(self, pixels: Tensor) -> Tensor:
        """[B, 3, S, S] -> [B, 1 + N, Dv]: CLS + patch tokens with positional embedding.

        Stops before `ln_pre` so a method can choose whether its prompts pass through it.
        """
        v = self.visual
        x = v.conv1(pixels.to(self.dtype))  # [B, Dv, g, g]
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [B, N, Dv]
        cls = v.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1)
        x = x + v.positional_embedding.to(x.dtype)
        return cast(Tensor, v.patch_dropout(x))

    def ln_pre(self, x: Tensor) -> Tensor:
        return cast(Tensor, self.visual.ln_pre(x))

    def pool(self, x: Tensor) -> Tensor:
        """[B, L, Dv] last-block output -> [B, D] projected CLS feature."""
        v = self.visual
        # ln_post is per token, so normalising only CLS equals open_clip's full-sequence norm
        pooled = v.ln_post(x[:, 0])
        return pooled @ v.proj if v.proj is not None else pooled
