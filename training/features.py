"""Training from cached image embeddings, for methods whose visual side is the frozen encoder.

Such a method's image embeddings depend only on the image and its augmentation, so the loop
encodes each training image once per augmented view (`MethodConfig.feature_views` views, at
most one per epoch, augmentations drawn from the seeded global RNG) and every epoch trains on
one cached view of each image, chosen at random (seeded). The papers draw a new augmentation
in every epoch; here an image has a fixed set of views. Batches keep the loader's own order:
the cache replays the loader's shuffle with a copy of its generator, so with one view and a
deterministic transform the cached run takes exactly the uncached run's steps.

The cache is float32 on the CPU, [views * images, D]: 4 * views * images * D bytes (ViT-B-16,
D = 512: 2 KiB per image and view; at 8 views, 16 shots of 10 classes take 2.5 MiB, of 100
classes 25 MiB, of ImageNet's 1000 classes 250 MiB).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor
from torch.utils.data import DataLoader, RandomSampler

from promptserve.models.errors import ConfigError
from promptserve.models.methods import Learner
from promptserve.training.errors import TrainingCancelled


@dataclass(frozen=True)
class EmbeddingBatch:
    """One cached step's input: embeddings in place of pixels."""

    embeds: Tensor  # [B, D] L2-normalised image embeddings of the frozen encoder
    labels: Tensor  # [B] indices into class_names
    class_names: list[str]


@dataclass(frozen=True)
class FeatureCache:
    """Every view of every training image, encoded once, with the loader to replay."""

    features: Tensor  # [views * N, D] float32 on the CPU, view-major (row v * N + i)
    labels: Tensor  # [N] label index of image i
    views: int
    seconds: float  # time spent encoding
    order: DataLoader[int]  # the training loader's batches of image indices, in its order

    @property
    def images(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return self.features.numel() * self.features.element_size()

    def describe(self) -> dict[str, int | float]:
        """What a run's summary records about its cache."""
        return {
            "views": self.views,
            "images": self.images,
            "bytes": self.nbytes,
            "encode_seconds": round(self.seconds, 2),
        }

    def epoch(
        self, class_names: list[str], generator: torch.Generator, device: torch.device
    ) -> Iterator[EmbeddingBatch]:
        """One epoch: the loader's batches, each image in one of its views (drawn per epoch)."""
        view = torch.randint(self.views, (self.images,), generator=generator)  # [N]
        for index in self.order:
            rows = view[index] * self.images + index  # [B]
            embeds = self.features[rows].to(device, non_blocking=True)
            yield EmbeddingBatch(embeds, self.labels[index].to(device), class_names)


def cached_views(learner: Learner, loader: Iterable[tuple[Tensor, Tensor]]) -> int:
    """How many views per image the loop caches for `learner` on `loader`; 0 for the uncached
    path (a learned visual side, caching turned off, or a loader without a dataset to encode)."""
    config = learner.config
    if config.feature_views < 0:
        raise ConfigError(f"feature_views must be 0 (off) or more, got {config.feature_views}")
    if not learner.frozen_visual or not isinstance(loader, DataLoader):
        return 0
    return min(config.feature_views, config.epochs)


@torch.no_grad()
def encode_views(
    learner: Learner,
    loader: DataLoader[tuple[Tensor, Tensor]],
    views: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[None]],
    should_stop: Callable[[], bool] | None = None,
) -> FeatureCache:
    """Encode `loader`'s dataset `views` times (a fresh augmentation each pass) into a cache.

    Call before the first epoch: the cache copies the loader's shuffle generator as it stands,
    so its batches follow the order the loader itself would have produced.
    """
    order = _index_loader(loader)
    start = time.perf_counter()
    passes = DataLoader(
        loader.dataset, batch_size=loader.batch_size or 1, num_workers=loader.num_workers
    )
    features: list[Tensor] = []
    labels: list[Tensor] = []
    for view in range(views):
        for pixels, targets in passes:
            if should_stop is not None and should_stop():
                raise TrainingCancelled(f"cancelled while caching view {view + 1} of {views}")
            with autocast():
                embeds = learner.encode_images(pixels.to(device))  # [B, D]
            features.append(embeds.float().cpu())
            if view == 0:
                labels.append(targets)
    return FeatureCache(
        torch.cat(features), torch.cat(labels).long(), views, time.perf_counter() - start, order
    )


def _index_loader(loader: DataLoader[tuple[Tensor, Tensor]]) -> DataLoader[int]:
    """A loader of image indices that batches and shuffles exactly as `loader` will."""
    count = len(cast(Sized, loader.dataset))
    generator = None
    if loader.generator is not None:
        generator = torch.Generator().set_state(loader.generator.get_state())
    return DataLoader(
        range(count),  # type: ignore[arg-type]
        batch_size=loader.batch_size,
        shuffle=isinstance(loader.sampler, RandomSampler),
        generator=generator,
        drop_last=loader.drop_last,
    )
