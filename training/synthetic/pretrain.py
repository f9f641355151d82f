"""Pretrain the embedded `mini` CLIP on the synthetic shapes world (`promptserve pretrain-mini`).

A contrastive CLIP loss with label-aware targets (a caption counts as positive for every image it
is true of, so the many same-class pairs in a batch are not pushed apart), plus auxiliary
cross-entropy losses from the normalised image embedding to the shape and colour labels through
linear heads. Without the shape loss a from-scratch ViT settles on the colour-only solution and
stays at chance on shape; the heads are thrown away after training.

Everything is seeded and the schedule is a fixed number of steps, so a run is reproducible on the
same machine and thread count. The result is an fp16 safetensors file plus a JSON record of the
run beside it (``mini.safetensors`` + ``mini.json``), which `models.backbone` picks up.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from promptserve.models.backbone import hash_state_dict, register_project_configs
from promptserve.training.loop import Progress
from promptserve.training.progress import step_progress
from promptserve.training.synthetic.captions import Caption, caption_for
from promptserve.training.synthetic.pretrain_eval import (
    evaluate_zero_shot,
    images_to_tensor,
    quality_bar,
)
from promptserve.training.synthetic.world import COLOURS, SHAPES, Scene, render, sample_scene

if TYPE_CHECKING:  # open_clip itself is imported on first use, as in models.backbone
    from open_clip.model import CLIP

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """The pretraining recipe; the committed `mini` weights record the one they were built with."""

    # what each field means: OPTION_HELP below, which `pretrain-mini --help` shows
    architecture: str = "mini"
    steps: int = 2200
    batch_size: int = 96
    lr: float = 1e-3
    warmup_fraction: float = 0.05
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    shape_loss_weight: float = 1.0
    colour_loss_weight: float = 0.2
    head_scale: float = 10.0
    single_attribute: float = 0.3
    few_colour_fraction: float = 0.5
    few_colours: int = 2
    seed: int = 0
    threads: int = 2
    eval_per_class: int = 16
    eval_every: int = 500
    init: str = ""


OPTION_HELP = {
    "architecture": "open_clip config in models/configs",
    "steps": "fixed schedule length (no wall-clock schedule: runs are reproducible)",
    "batch_size": "images (and captions) per step",
    "lr": "AdamW peak learning rate",
    "warmup_fraction": "share of the steps in linear warm-up, then cosine to zero",
    "weight_decay": "AdamW weight decay; not applied to norms, biases, embeddings, logit scale",
    "grad_clip": "gradient norm clip",
    "shape_loss_weight": "auxiliary cross-entropy from the image embedding to the shape label",
    "colour_loss_weight": "auxiliary cross-entropy from the image embedding to the colour label",
    "head_scale": "the normalised embedding is multiplied by this before the auxiliary heads",
    "single_attribute": "share of captions naming only the shape or only the colour",
    "few_colour_fraction": "share of each batch drawn from only --few-colours colours",
    "few_colours": "colours in the few-colour part of a batch",
    "seed": "seed of the batches and the initial weights",
    "threads": "torch intra-op threads",
    "eval_per_class": "held-out images per class (64 classes -> 1024 per test set)",
    "eval_every": "steps between interim evaluations; 0 evaluates only at the end",
    "init": "weights (.safetensors) to continue from; empty starts from scratch",
}


@dataclass(frozen=True)
class TrainBatch:
    pixels: Tensor  # [B, 3, S, S] normalised
    tokens: Tensor  # [B, T]
    targets: Tensor  # [B, B] 1 where caption j is true of image i
    shapes: Tensor  # [B] shape index
    colours: Tensor  # [B] colour index


class BatchMaker:
    """Generates training batch `step` from (seed, step) alone, so prefetching is deterministic."""

    def __init__(self, config: PretrainConfig, tokenizer: Callable[[list[str]], Tensor], size: int):
        self.config = config
        self.tokenizer = tokenizer
        self.size = size
        self._tokens: dict[str, Tensor] = {}

    def __call__(self, step: int) -> TrainBatch:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, 7, step])
        few = round(cfg.batch_size * cfg.few_colour_fraction)
        palette = list(rng.choice(list(COLOURS), size=cfg.few_colours, replace=False))
        scenes: list[Scene] = []
        for i in range(cfg.batch_size):
            colour = palette[rng.integers(len(palette))] if i < few else None
            scenes.append(sample_scene(rng, colour=colour))
        captions = [caption_for(s, rng, single_attribute=cfg.single_attribute) for s in scenes]
        return TrainBatch(
            pixels=images_to_tensor([render(s, self.size) for s in scenes]),
            tokens=self._tokenize(captions),
            targets=torch.tensor([[c.matches(s) for c in captions] for s in scenes]).float(),
            shapes=torch.tensor([SHAPES.index(s.shape) for s in scenes]),
            colours=torch.tensor([list(COLOURS).index(s.colour) for s in scenes]),
        )

    def _tokenize(self, captions: list[Caption]) -> Tensor:
        missing = [c.text for c in captions if c.text not in self._tokens]
        if missing:
            for text, ids in zip(missing, self.tokenizer(missing), strict=True):
                self._tokens[text] = ids
        return torch.stack([self._tokens[c.text] for c in captions])


def clip_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Symmetric CE of [B, B] logits against label-aware targets (rows: images, cols: captions)."""
    to_text = F.cross_entropy(logits, targets / targets.sum(1, keepdim=True))
    to_image = F.cross_entropy(logits.T, (targets / targets.sum(0, keepdim=True)).T)
    return 0.5 * (to_text + to_image)


def pretrain_mini(
    out: Path,
    config: PretrainConfig = PretrainConfig(),
    progress: Callable[[Progress], None] | None = None,
) -> dict[str, object]:
    """Train from scratch, evaluate zero-shot, write weights and record; return the record."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
            torch.manual_seed(config.seed)
            return _pretrain(out, config, progress)
    finally:
        torch.set_num_threads(threads)


def _pretrain(
    out: Path, config: PretrainConfig, progress: Callable[[Progress], None] | None
) -> dict[str, object]:
    import open_clip  # on first use, as in models.backbone

    register_project_configs()
    model = cast("CLIP", open_clip.create_model(config.architecture, pretrained=None))
    if config.init:
        state = load_file(config.init)
        model.load_state_dict({k: v.float() for k, v in state.items()})
    tokenizer = open_clip.get_tokenizer(config.architecture)
    size = int(model.visual.image_size[0])
    embed_dim = int(model.text_projection.shape[1])
    heads = nn.ModuleDict(
        {"shape": nn.Linear(embed_dim, len(SHAPES)), "colour": nn.Linear(embed_dim, len(COLOURS))}
    )
    optimizer = _optimizer(model, heads, config)
    warmup = max(1, round(config.steps * config.warmup_fraction))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, warmup, config))
    make_batch = BatchMaker(config, tokenizer, size)
    curve: list[dict[str, float]] = []
    losses: list[float] = []
    train_seconds = 0.0
    with ThreadPoolExecutor(max_workers=1) as pool:  # generate batch s+1 while step s runs
        upcoming = pool.submit(make_batch, 0)
        for step in range(config.steps):
            started = time.perf_counter()
            batch = upcoming.result()
            if step + 1 < config.steps:
                upcoming = pool.submit(make_batch, step + 1)
            loss = _train_step(model, heads, batch, optimizer, config)
            schedule.step()
            losses.append(loss)
            train_seconds += time.perf_counter() - started
            if progress is not None:
                eta = train_seconds / (step + 1) * (config.steps - step - 1)
                lr = float(optimizer.param_groups[0]["lr"])
                progress(Progress(step + 1, config.steps, 1, 1, loss, lr, eta))
            done = step + 1
            if config.eval_every and done % config.eval_every == 0 and done < config.steps:
                point = {"step": done, "train_s": round(train_seconds, 1)}
                point |= evaluate_zero_shot(model, tokenizer, *_eval_set(config))
                curve.append(point)
                log.info("step %d: %s", done, point)
    model.eval()
    accuracies = evaluate_zero_shot(model, tokenizer, *_eval_set(config))
    return _write(out, model, config, accuracies, losses, train_seconds, curve)


def _train_step(
    model: CLIP,
    heads: nn.ModuleDict,
    batch: TrainBatch,
    optimizer: torch.optim.Optimizer,
    config: PretrainConfig,
) -> float:
    model.train()
    image = F.normalize(model.encode_image(batch.pixels), dim=-1)  # [B, D]
    text = F.normalize(model.encode_text(batch.tokens), dim=-1)  # [B, D]
    logits = model.logit_scale.exp() * image @ text.T  # [B, B]
    loss = clip_loss(logits, batch.targets)
    scaled = config.head_scale * image
    shape_loss = F.cross_entropy(heads["shape"](scaled), batch.shapes)
    colour_loss = F.cross_entropy(heads["colour"](scaled), batch.colours)
    log.debug(
        "clip %.3f shape %.3f colour %.3f", loss.item(), shape_loss.item(), colour_loss.item()
    )
    loss = loss + config.shape_loss_weight * shape_loss + config.colour_loss_weight * colour_loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    nn.utils.clip_grad_norm_(params, config.grad_clip)
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return float(loss.item())


def _eval_set(config: PretrainConfig) -> tuple[int, int]:
    """(seed, images per class) of the held-out sets: a seed the training batches never use."""
    return config.seed + 1, config.eval_per_class


def _optimizer(model: nn.Module, heads: nn.Module, config: PretrainConfig) -> torch.optim.AdamW:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in [*model.named_parameters(), *heads.named_parameters()]:
        exempt = param.ndim < 2 or "embedding" in name or "logit_scale" in name
        (no_decay if exempt else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


def _lr_factor(step: int, warmup: int, config: PretrainConfig) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, config.steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _write(
    out: Path,
    model: nn.Module,
    config: PretrainConfig,
    accuracies: dict[str, float],
    losses: list[float],
    train_seconds: float,
    curve: list[dict[str, float]],
) -> dict[str, object]:
    import open_clip  # loaded already: the model is one of its

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out))
    out.chmod(0o644)  # a packaged data file, not a private one
    tail = losses[-20:]
    record: dict[str, object] = {
        "architecture": config.architecture,
        "recipe": asdict(config),
        "steps": config.steps,
        "seed": config.seed,
        "train_seconds": round(train_seconds, 1),
        "seconds_per_step": round(train_seconds / max(1, len(losses)), 3),
        "final_loss": round(sum(tail) / max(1, len(tail)), 4),
        "accuracies": accuracies,
        "quality_bar": quality_bar(accuracies),
        "learning_curve": curve,
        "weights_sha256": hash_state_dict({k: v.float() for k, v in state.items()}),
        "weights_dtype": "float16",
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__},
    }
    if config.init:  # a continued run: keep the record of what it continued from
        parent = Path(config.init).with_suffix(".json")
        record["continued_from"] = json.loads(parent.read_text()) if parent.exists() else None
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("wrote %s and %s", out, out.with_suffix(".json").name)
    return record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `pretrain-mini` options: --out plus every PretrainConfig field as --field-name."""
    parser.add_argument("--out", type=Path, required=True, help="weights file (.safetensors)")
    for field in fields(PretrainConfig):
        default = getattr(PretrainConfig(), field.name)
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            type=type(default),
            default=default,
            help=f"{OPTION_HELP[field.name]} (default {default!r})",
        )


def run(args: argparse.Namespace) -> int:
    """Run `pretrain-mini` from parsed arguments; print the record's summary."""
    values = {f.name: getattr(args, f.name) for f in fields(PretrainConfig)}
    config = PretrainConfig(**values)

    with step_progress("pretrain-mini") as report:
        record = pretrain_mini(args.out, config, report)
    summary = {k: record[k] for k in ("steps", "train_seconds", "final_loss", "accuracies")}
    sys.stdout.write(json.dumps(summary | {"quality_bar": record["quality_bar"]}, indent=2) + "\n")
    return 0
