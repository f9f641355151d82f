"""Pixel preprocessing from a backbone's `PreprocessConfig`: CLIP's train and test transforms."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image
from torch import Tensor
from torchvision.transforms import v2 as T

from models.backbone import PreprocessConfig
from models.errors import ConfigError

_INTERPOLATION = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}

ImageTransform = Callable[[Image.Image], Tensor]


def _interpolation(cfg: PreprocessConfig) -> T.InterpolationMode:
    return _INTERPOLATION.get(cfg.interpolation, T.InterpolationMode.BICUBIC)


def _to_normalised_tensor(cfg: PreprocessConfig) -> list[T.Transform]:
    import torch

    return [
        T.ToImage(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(mean=list(cfg.mean), std=list(cfg.std)),
    ]


def eval_transform(cfg: PreprocessConfig) -> ImageTransform:
    """RGB, resize the short side to `size`, centre-crop, scale to [0, 1], normalise."""
    return T.Compose(
        [
            T.Lambda(_to_rgb),
            T.Resize(cfg.size, interpolation=_interpolation(cfg), antialias=True),
            T.CenterCrop(cfg.size),
            *_to_normalised_tensor(cfg),
        ]
    )


DASSL_CROP_SCALE = (0.08, 1.0)  # Dassl's RandomResizedCrop default, used by every release


def train_transform(
    cfg: PreprocessConfig, scale: tuple[float, float] = DASSL_CROP_SCALE
) -> ImageTransform:
    """CoOp's few-shot augmentation: random resized crop (area `scale`) and horizontal flip."""
    low, high = scale
    if not 0 < low <= high <= 1:
        raise ConfigError(f"crop scale must satisfy 0 < low <= high <= 1, got {scale}")
    return T.Compose(
        [
            T.Lambda(_to_rgb),
            T.RandomResizedCrop(
                cfg.size, scale=scale, interpolation=_interpolation(cfg), antialias=True
            ),
            T.RandomHorizontalFlip(),
            *_to_normalised_tensor(cfg),
        ]
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")
