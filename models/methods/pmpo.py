"""pmpo: Partitioned Multi-modal Prompt (Tian et al., "Multi-Prompt with Depth Partitioned
Cross-Modal Learning", arXiv 2305.06221).

No official code has been released; this module is our reading of the paper, and every choice
below is a config field so it can be corrected once the paper is checked:

* N text prompts ``P_k`` [M, Dt], each a coop-style context (the first from "a photo of a",
  the others N(0, 0.02^2)); one projection ``F_k: Linear(Dt -> Dv)`` per prompt.
* One visual pass. The first ``depth`` vision blocks are split into N contiguous groups; at
  every block of group k the M visual prompt slots (at the end of the sequence) are replaced
  with ``F_k(P_k)`` (MaPLe's coupling and replace semantics; block 0's prompts go through
  ``ln_pre`` as MaPLe's do); after the partitioned range the slots are carried.
* Class embedding: the normalised mean of the normalised features of the N prompts and of the
  hand-crafted template, ``norm(mean(norm(g_1), .., norm(g_N), norm(h)))``. Loss: cross-entropy.

A prompt whose group is empty (a partition entry of 0, or a tower with fewer partitioned blocks
than prompts, like the 2-block test backbone) is text-only and has no projection. At export the
projected prompts are constants: the visual graph holds them as buffers, not ``F_k`` or ``P_k``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promptserve.models.backbone import Backbone
from promptserve.models.errors import ConfigError
from promptserve.models.methods.base import FoldedVisualGraph, Learner, SharedVisual
from promptserve.models.methods.config import MINI_RECIPE, MethodConfig
from promptserve.models.methods.registry import register_method
from promptserve.models.prompting import PromptedVisionEncoder, VisionPrompts

DEPTH_FRACTION = 9 / 12  # the paper's default partitioned depth, relative to ViT-B/16's blocks

Position = Literal["end", "after_cls"]


@dataclass(frozen=True, kw_only=True)
class PMPOConfig(MethodConfig):
    n_prompts: int = 3  # N text prompts, one depth group each
    n_ctx: int = 4  # M tokens per text prompt, and M visual prompt slots
    ctx_init: str | None = "a photo of a"  # first prompt's init (M tokens); None: random
    ctx_std: float = 0.02  # std of the N(0, std^2) init of the other prompts
    # partitioned vision blocks; None: round(0.75 * Lv) (9 of 12 on ViT-B/16), an int is clamped
    # to the backbone's block count Lv
    depth: int | None = None
    # blocks per group, first prompt first (N entries summing to the depth); None: as even as
    # possible, earlier groups one block longer
    partition: tuple[int, ...] | None = None
    visual_position: Position = "end"  # where the M visual slots sit in the sequence
    prompts_through_ln_pre: bool = True  # block 0's prompts are normalised by ln_pre (MaPLe)
    use_template: bool = True  # the hand-crafted template's feature joins the ensemble
    template: str = "a photo of a {}."
    # recipe assumed from MaPLe (vit_b16_c2_ep5_batch4_2ctx): SGD 0.0035, batch 4, 5 epochs,
    # cosine, 1 warm-up epoch at 1e-5; the paper's own recipe is not known
    lr: float = 0.0035
    batch_size: int = 4
    epochs: int = 5


def partition_sizes(config: PMPOConfig, num_blocks: int) -> tuple[int, ...]:
    """Blocks per prompt group, first group first, for a tower of `num_blocks` blocks."""
    n = config.n_prompts
    if config.partition is not None:
        sizes = tuple(config.partition)
        if len(sizes) != n or min(sizes) < 0:
            raise ConfigError(f"partition needs {n} non-negative block counts, got {sizes}")
        if sum(sizes) > num_blocks:
            raise ConfigError(f"partition {sizes} spans more than the {num_blocks} blocks")
        if config.depth is not None and config.depth != sum(sizes):
            raise ConfigError(f"partition {sizes} does not sum to depth {config.depth}")
        return sizes
    if config.depth is not None and config.depth < 0:
        raise ConfigError(f"depth must not be negative, got {config.depth}")
    depth = round(DEPTH_FRACTION * num_blocks) if config.depth is None else config.depth
    base, extra = divmod(min(depth, num_blocks), n)
    return tuple(base + (k < extra) for k in range(n))


def partition_prompts(
    block_prompts: Tensor, depth: int, config: PMPOConfig
) -> VisionPrompts | None:
    """Vision prompts whose slots take `block_prompts[l]` [M, Dv] entering each of the first
    `depth` blocks and are carried after them; None (the plain tower) when `depth` is 0.

    `depth` comes as a Python int, not from the tensor's shape, so a trace keeps it constant.
    """
    if depth == 0:
        return None

    def replace_in_partition(index: int, x: Tensor, slots: slice) -> Tensor | None:
        return block_prompts[index] if index < depth else None  # [M, Dv], shared by the batch

    return VisionPrompts(
        tokens=block_prompts[0],
        position=config.visual_position,
        through_ln_pre=config.prompts_through_ln_pre,
        hook=replace_in_partition,
    )


@register_method(
    "pmpo",
    PMPOConfig,
    presets={
        "maple_vit_b16_ep5_batch4": {},  # the assumed MaPLe recipe: the defaults
        # mini on CPU: batch 4 would mean hundreds of steps per epoch; batch 16 for 8 epochs at
        # a higher rate (bench/suite.py's Sepia, 16 shots, seed 1: base / novel 75.0 / 75.0 at
        # lr 0.02 against 75.0 / 72.9 at 0.01; Hue50 63.5 / 45.8, where 5 epochs at 0.005 gave
        # 66.7 / 29.7)
        "mini": {**MINI_RECIPE, "epochs": 8, "batch_size": 16, "lr": 0.02},
    },
)
class PMPOLearner(Learner):
    config: PMPOConfig

    def __init__(self, backbone: Backbone, config: PMPOConfig) -> None:
        super().__init__(backbone, config)
        if config.n_prompts < 1 or config.n_ctx < 1:
            raise ConfigError("pmpo needs at least one prompt of at least one token")
        if config.use_template and "{}" not in config.template:
            raise ConfigError("the pmpo template needs a '{}' for the class name")
        self.prompts = nn.Parameter(self._init_prompts())  # [N, M, Dt]
        self.sizes = partition_sizes(config, self.vision.num_blocks)
        # the prompt index owning each partitioned block, in block order
        self.owners = tuple(k for k, size in enumerate(self.sizes) for _ in range(size))
        self.proj = nn.ModuleDict(
            {
                str(k): nn.Linear(self.text.width, self.vision.width)
                for k in sorted(set(self.owners))
            }
        )

    def _init_prompts(self) -> Tensor:
        cfg = self.config
        prompts = torch.randn(cfg.n_prompts, cfg.n_ctx, self.text.width) * cfg.ctx_std
        if cfg.ctx_init is not None:
            first = self.text.init_context(cfg.n_ctx, cfg.ctx_init, cfg.ctx_std)  # [M', Dt]
            if first.shape[0] != cfg.n_ctx:
                raise ConfigError(
                    f"ctx_init {cfg.ctx_init!r} is {first.shape[0]} tokens; n_ctx is {cfg.n_ctx}"
                )
            prompts[0] = first.detach()
        return prompts

    def block_prompts(self) -> Tensor:
        """[depth, M, Dv]: ``F_k(P_k)`` for each partitioned block's owner k."""
        if not self.owners:
            return self.prompts.new_zeros(0, self.config.n_ctx, self.vision.width)
        projected = {k: proj(self.prompts[int(k)]) for k, proj in self.proj.items()}  # [M, Dv]
        return torch.stack([projected[str(k)] for k in self.owners])

    def encode_images(self, pixels: Tensor) -> Tensor:
        prompts = partition_prompts(self.block_prompts(), len(self.owners), self.config)
        return F.normalize(self.vision(pixels, prompts), dim=-1)

    def encode_classes(self, names: list[str]) -> Tensor:
        n, count = self.config.n_prompts, len(names)
        tokens = self.text.class_tokens(names, self.config.n_ctx)
        # all N prompts in one text pass: prompt-major, [N * C, T, Dt]
        embeds = torch.cat([tokens.with_context(prompt) for prompt in self.prompts])
        feats = self.text(embeds, tokens.eot_index.repeat(n))  # [N * C, D]
        feats = F.normalize(feats, dim=-1).unflatten(0, (n, count))  # [N, C, D]
        if self.config.use_template:
            template = self.text.encode_templates(names, (self.config.template,))  # [C, D]
            feats = torch.cat([feats, template.unsqueeze(0)])  # [N + 1, C, D]
        return F.normalize(feats.mean(dim=0), dim=-1)

    def visual_graph(self) -> nn.Module:
        """The projected prompts folded into one constant [depth, M, Dv]: no F_k, no P_k."""
        with torch.no_grad():
            block_prompts = self.block_prompts()
        prompts = partial(partition_prompts, depth=len(self.owners), config=self.config)
        return FoldedVisualGraph(self.vision, block_prompts, prompts)

    def shared_visual(self) -> SharedVisual | None:
        """One graph for every pmpo classifier of this partition: the folded prompts as an
        input; None when no block is partitioned (the graph is then the plain tower)."""
        if not self.owners:
            return None
        with torch.no_grad():
            block_prompts = self.block_prompts()  # [depth, M, Dv]
        config = self.config
        structure = {
            "depth": len(self.owners),
            "position": config.visual_position,
            "through_ln_pre": config.prompts_through_ln_pre,
        }
        graph = PMPOSharedGraph(self.vision, len(self.owners), config)
        return SharedVisual(graph, {"block_prompts": block_prompts}, structure)

    def describe(self) -> dict[str, Any]:
        slots = self.config.n_ctx if self.owners else 0
        return {
            **super().describe(),
            "tokens_per_image": 1 + self.vision.tower.num_patches + slots,
            "partition": list(self.sizes),
        }


class PMPOSharedGraph(nn.Module):
    """pixels [B, 3, S, S], block_prompts [B, depth, M, Dv] -> [B, D]: the pmpo forward with
    each image's own classifier's folded prompts."""

    def __init__(self, vision: PromptedVisionEncoder, depth: int, config: PMPOConfig) -> None:
        super().__init__()
        self.vision = vision
        self.depth = depth
        self.config = config

    def forward(self, pixels: Tensor, block_prompts: Tensor) -> Tensor:
        per_block = block_prompts.transpose(0, 1)  # [depth, B, M, Dv]
        prompts = partition_prompts(per_block, self.depth, self.config)
        return F.normalize(self.vision(pixels, prompts), dim=-1)
