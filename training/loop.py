"""One training loop for every method: `fit(learner, loader, class_names, options)`."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import SGD, Adam, AdamW, Optimizer
from torch.utils.data import DataLoader

from promptserve.models.methods import Batch, Learner, MethodConfig
from promptserve.training.errors import TrainingCancelled
from promptserve.training.features import EmbeddingBatch, cached_views, encode_views

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class Progress:
    """What the progress callback receives after every step."""

    step: int  # steps done, 1-based
    total_steps: int
    epoch: int  # 1-based
    epochs: int
    loss: float
    lr: float
    eta_s: float  # estimated seconds left


@dataclass(frozen=True, kw_only=True)
class FitOptions:
    device: str = "cpu"
    precision: Precision = "auto"  # auto: bf16 autocast on CUDA from Ampere on, else fp32
    seed: int = 1
    progress: Callable[[Progress], None] | None = None
    should_stop: Callable[[], bool] | None = None  # polled every step; True cancels the run


@dataclass
class FitResult:
    steps: int
    epochs: int
    seconds: float
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    feature_cache: dict[str, Any] | None = None  # the cache trained from (`FeatureCache`)

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


def build_optimizer(params: list[torch.nn.Parameter], config: MethodConfig) -> Optimizer:
    if config.optimizer == "sgd":
        return SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return Adam(params, lr=config.lr, eps=config.adam_eps, weight_decay=config.weight_decay)
    return AdamW(params, lr=config.lr, eps=config.adam_eps, weight_decay=config.weight_decay)


def learning_rate(step: int, total: int, warmup: int, config: MethodConfig) -> float:
    """Constant `warmup_lr` for `warmup` steps, then cosine from `lr` down to 0."""
    if step < warmup:
        return config.warmup_lr
    span = max(1, total - warmup)
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * (step - warmup) / span))


def epoch_learning_rate(epoch: int, config: MethodConfig) -> float:
    """Dassl's schedule for 0-based `epoch`: constant `warmup_lr` for `warmup_epochs` epochs,
    then ``lr/2 * (1 + cos(pi * (epoch - warmup_epochs) / epochs))``, fixed within an epoch.

    Dassl's constant warm-up hands over to a cosine over all `epochs` that starts at the peak,
    so the last epoch trains above 0 (for 1 warm-up epoch, at cos(pi * (epochs - 2) / epochs)).
    """
    if epoch < config.warmup_epochs:
        return config.warmup_lr
    progress = (epoch - config.warmup_epochs) / max(1, config.epochs)
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * progress))


def autocast_for(
    device: torch.device, precision: Precision
) -> contextlib.AbstractContextManager[None]:
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    if precision == "auto" and torch.cuda.get_device_capability(device)[0] < 8:
        return contextlib.nullcontext()  # bf16 before Ampere is emulated: slower than fp32
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type="cuda", dtype=dtype)


def fit(
    learner: Learner,
    loader: Iterable[tuple[Tensor, Tensor]],
    class_names: list[str],
    options: FitOptions | None = None,
) -> FitResult:
    """Train `learner` for `learner.config.epochs` epochs over `loader` (pixels, label index).

    The schedule follows `config.lr_schedule`: per epoch as in Dassl (`epoch_learning_rate`),
    or per step (`learning_rate`); both start with `warmup_epochs` at a constant low rate.
    Methods with nothing to learn (zeroshot) return at once. A method whose visual side is the
    frozen encoder trains on cached embeddings (`training.features`) when `loader` is a
    DataLoader and its `feature_views` is above 0; `seconds` then includes the encoding.
    """
    options = options or FitOptions()
    config = learner.config
    params = learner.trainable_parameters()
    if not params or config.epochs <= 0:
        return FitResult(steps=0, epochs=0, seconds=0.0)
    device = torch.device(options.device)
    torch.manual_seed(options.seed)
    learner.to(device).train()

    steps_per_epoch = _count_batches(loader)
    total = steps_per_epoch * config.epochs
    warmup = min(steps_per_epoch * config.warmup_epochs, total - 1)
    optimizer = build_optimizer(params, config)
    scaler = torch.amp.GradScaler(
        "cuda", enabled=device.type == "cuda" and options.precision == "fp16"
    )
    result = FitResult(steps=0, epochs=0, seconds=0.0)
    start = time.perf_counter()
    try:
        batches = _epoch_batches(learner, loader, class_names, device, options, result)
    except TrainingCancelled:  # while caching features
        learner.eval()
        raise
    for epoch in range(1, config.epochs + 1):
        epoch_losses = []
        for batch in batches():
            lr = (
                epoch_learning_rate(epoch - 1, config)
                if config.lr_schedule == "epoch"
                else learning_rate(result.steps, total, warmup, config)
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            if options.should_stop is not None and options.should_stop():
                learner.eval()
                raise TrainingCancelled(f"cancelled at step {result.steps} of {total}")
            with autocast_for(device, options.precision):
                loss = _loss(learner, batch)
            if not torch.isfinite(loss):
                learner.eval()
                raise FloatingPointError(f"loss became {loss.item()} at step {result.steps}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            result.steps += 1
            epoch_losses.append(loss.item())
            _report(options, result.steps, total, epoch, config.epochs, epoch_losses[-1], lr, start)
        result.epochs = epoch
        result.losses.append(sum(epoch_losses) / max(1, len(epoch_losses)))
        log.info("epoch %d/%d loss %.4f", epoch, config.epochs, result.losses[-1])
    result.seconds = time.perf_counter() - start
    learner.eval()
    return result


StepInput = Batch | EmbeddingBatch


def _epoch_batches(
    learner: Learner,
    loader: Iterable[tuple[Tensor, Tensor]],
    class_names: list[str],
    device: torch.device,
    options: FitOptions,
    result: FitResult,
) -> Callable[[], Iterator[StepInput]]:
    """What each epoch iterates: the loader's pixels, or for a method with a frozen visual
    side, cached embeddings encoded here (recorded in `result.feature_cache`)."""
    views = cached_views(learner, loader)
    if not views:

        def pixel_epoch() -> Iterator[StepInput]:
            for pixels, labels in loader:
                yield Batch(pixels.to(device), labels.to(device), class_names)

        return pixel_epoch
    assert isinstance(loader, DataLoader)  # cached_views checked it
    cache = encode_views(
        learner,
        loader,
        views,
        device,
        lambda: autocast_for(device, options.precision),
        options.should_stop,
    )
    result.feature_cache = cache.describe()
    log.info("cached %d views of %d images (%d bytes)", views, cache.images, cache.nbytes)
    view_rng = torch.Generator().manual_seed(options.seed)
    return lambda: cache.epoch(class_names, view_rng, device)


def _loss(learner: Learner, batch: StepInput) -> Tensor:
    if isinstance(batch, EmbeddingBatch):
        return learner.loss_from_embeddings(batch.embeds, batch.labels, batch.class_names)
    return learner.loss(batch)


def _report(
    options: FitOptions,
    step: int,
    total: int,
    epoch: int,
    epochs: int,
    loss: float,
    lr: float,
    start: float,
) -> None:
    if options.progress is None:
        return
    elapsed = time.perf_counter() - start
    eta = elapsed / step * (total - step)
    options.progress(Progress(step, total, epoch, epochs, loss, lr, eta))


def _count_batches(loader: Iterable[tuple[Tensor, Tensor]]) -> int:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return sum(1 for _ in loader)


@torch.no_grad()
def evaluate(
    learner: Learner,
    loader: Iterable[tuple[Tensor, Tensor]],
    class_names: list[str],
    device: str = "cpu",
) -> float:
    """Top-1 accuracy (percent) of the eager learner over `loader`."""
    learner.to(device).eval()
    classes = learner.encode_classes(class_names)
    correct = seen = 0
    for pixels, labels in loader:
        logits = learner.logits(learner.encode_images(pixels.to(device)), classes)
        correct += int((logits.argmax(dim=-1).cpu() == labels).sum())
        seen += len(labels)
    return 100.0 * correct / max(1, seen)
