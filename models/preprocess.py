"""Pixel preprocessing from a backbone's `PreprocessConfig`: CLIP's train and test transforms,
and a fast path for serving that gives the same pixels at a fraction of the cost.

`eval_transform` is the reference (torchvision, open_clip's order of steps): convert to RGB,
resize the whole image, crop or pad, scale, normalise. The fast path (`fast_pixels` +
`normalise`, or `FastEvalTransform` for one image) computes where the reference's crop lands
in the source image and resamples only that box, with the same filter and the same sampling
positions (Pillow's `resize(box=...)` uses pixels outside the box for the filter taps, as a
resize of the whole image does), so its uint8 pixels equal the reference's up to float
rounding. It keeps uint8 until the last step and normalises a whole batch in one fused
multiply-add. A JPEG decoded in draft mode (DCT-domain downscale, see
`service.classify.images`) is passed with its draft scale; that is the one approximation.

torchvision is imported only where the reference and the training transforms are built: with
it comes torch's compiler (seconds of start-up), and the serving path (the fast path) needs
neither.

Normalisation is not moved into the exported graph: the artifact's visual graph takes
normalised float pixels (docs/reference/artifact.md), and artifacts already published would
need re-exporting.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from promptserve.models.backbone import PreprocessConfig
from promptserve.models.errors import ConfigError

if TYPE_CHECKING:
    from torchvision.transforms import v2 as T

_PIL_FILTER = {  # the resize filters torchvision and Pillow both have, by torchvision's names
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}
RESIZE_MODES = ("shortest", "longest", "squash")  # open_clip's; see `eval_transform`

ImageTransform = Callable[[Image.Image], Tensor]


def _filter_name(cfg: PreprocessConfig) -> str:
    """The resize filter of `cfg` (bicubic for names torchvision lacks, as open_clip does)."""
    return cfg.interpolation if cfg.interpolation in _PIL_FILTER else "bicubic"


def interpolation_mode(cfg: PreprocessConfig) -> T.InterpolationMode:
    """`cfg`'s resize filter as torchvision's mode."""
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(_filter_name(cfg))


def _to_normalised_tensor(cfg: PreprocessConfig) -> list[T.Transform]:
    from torchvision.transforms import v2 as T

    return [
        T.ToImage(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(mean=list(cfg.mean), std=list(cfg.std)),
    ]


def eval_transform(cfg: PreprocessConfig) -> ImageTransform:
    """RGB, resize as `cfg.resize_mode` says, crop (or pad) to `size`, scale to [0, 1],
    normalise. Modes as open_clip's: "shortest" resizes the short side to `size` and
    centre-crops; "longest" resizes the long side to `size` and pads with black; "squash"
    resizes to `size` x `size` ignoring the aspect ratio."""
    from torchvision.transforms import v2 as T

    check_resize_mode(cfg)
    return T.Compose(
        [
            T.Lambda(_to_rgb),
            T.Lambda(functools.partial(_reference_resize, cfg=cfg)),
            T.CenterCrop(cfg.size),  # pads with black when smaller ("longest")
            *_to_normalised_tensor(cfg),
        ]
    )


def check_resize_mode(cfg: PreprocessConfig) -> None:
    if cfg.resize_mode not in RESIZE_MODES:
        raise ConfigError(
            f"unknown resize mode {cfg.resize_mode!r}; choose one of {', '.join(RESIZE_MODES)}"
        )


def _reference_resize(image: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    from torchvision.transforms.v2 import functional as TF

    interpolation = interpolation_mode(cfg)
    if cfg.resize_mode == "shortest":
        return TF.resize(image, [cfg.size], interpolation=interpolation)  # type: ignore[return-value]
    width, height = resized_size(image.width, image.height, cfg)
    return TF.resize(image, [height, width], interpolation=interpolation)  # type: ignore[return-value]


def resized_size(width: int, height: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """(width, height) of the whole image after the reference's resize step."""
    size = cfg.size
    if cfg.resize_mode == "squash":
        return size, size
    if cfg.resize_mode == "longest":  # open_clip's ResizeKeepRatio(longest=1)
        ratio = max(width / size, height / size)
        return round(width / ratio), round(height / ratio)
    short, long = sorted((width, height))
    if short == size:  # torchvision leaves such an image as it is
        return width, height
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


@dataclass(frozen=True)
class Placement:
    """Where the reference's output comes from: the source `box` (left, top, right, bottom,
    fractional) is resampled to `size` (width, height) and placed at `offset` on a black
    `cfg.size` square."""

    box: tuple[float, float, float, float]
    size: tuple[int, int]
    offset: tuple[int, int]


def placement(width: int, height: int, cfg: PreprocessConfig) -> Placement:
    """The reference's resize + centre crop/pad of a `width` x `height` image, as one box."""
    new_w, new_h = resized_size(width, height, cfg)
    sx, sy = width / new_w, height / new_h  # source pixels per resized pixel
    left, top = _crop_start(new_w, cfg.size), _crop_start(new_h, cfg.size)
    out_w, out_h = min(new_w, cfg.size), min(new_h, cfg.size)
    box = (left * sx, top * sy, (left + out_w) * sx, (top + out_h) * sy)
    # torchvision pads the left/top with the floor of half the shortfall
    offset = ((cfg.size - out_w) // 2, (cfg.size - out_h) // 2)
    return Placement(box=box, size=(out_w, out_h), offset=offset)


def _crop_start(extent: int, size: int) -> int:
    return int(round((extent - size) / 2.0)) if extent > size else 0


def fast_pixels(
    image: Image.Image, cfg: PreprocessConfig, full_size: tuple[int, int] | None = None
) -> np.ndarray:
    """A decoded image -> the reference's pixels before scaling: uint8 [S, S, 3].

    `full_size`: (width, height) of the image at full resolution when it was decoded smaller
    (JPEG draft mode, which divides both sides by 2, 4 or 8, rounding up); the geometry is
    computed at full size, as the reference sees the image.
    """
    check_resize_mode(cfg)
    if image.mode not in ("RGB", "L"):  # as the reference: convert first (alpha dropped)
        image = image.convert("RGB")
    full_w, full_h = full_size or image.size
    scale = max(1, round(full_w / image.width))  # the draft divisor
    where = placement(full_w, full_h, cfg)
    left, top, right, bottom = (v / scale for v in where.box)
    resample = _PIL_FILTER[_filter_name(cfg)]
    out_w, out_h = where.size
    if resample != Image.Resampling.NEAREST and right - left > out_w and bottom - top > out_h:
        # downscaling: resample only the box (Pillow's box resize is exact only then)
        region = image.resize(where.size, resample, box=(left, top, right, bottom))
    else:  # enlarging (a small image) or nearest: the reference's own steps, cheap here
        new_w, new_h = resized_size(image.width, image.height, cfg)
        if (new_w, new_h) != image.size:
            image = image.resize((new_w, new_h), resample)
        x, y = _crop_start(new_w, cfg.size), _crop_start(new_h, cfg.size)
        region = image.crop((x, y, x + out_w, y + out_h))
    if region.mode == "L":  # grey resampled once, then copied to three channels
        region = region.convert("RGB")
    if where.size == (cfg.size, cfg.size):
        return np.array(region)  # writable, so torch can wrap it
    canvas = np.zeros((cfg.size, cfg.size, 3), dtype=np.uint8)
    x, y = where.offset
    canvas[y : y + where.size[1], x : x + where.size[0]] = np.asarray(region)
    return canvas


def normalise(pixels: Tensor, cfg: PreprocessConfig) -> Tensor:
    """uint8 [B, 3, S, S] (any strides, e.g. a channels-last view; any device) -> normalised
    float32 [B, 3, S, S], contiguous, in one multiply-add over the batch:
    x * 1/(255 std) - mean/std."""
    if pixels.dtype != torch.uint8 or pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"expected uint8 [B, 3, S, S] pixels, got {pixels.dtype} {pixels.shape}")
    scale, shift = _affine(cfg.mean, cfg.std)
    device = pixels.device
    out = torch.empty(pixels.shape, dtype=torch.float32, device=device)
    return torch.addcmul(shift.to(device), pixels, scale.to(device), out=out)


def to_channels_first(pixels: Tensor) -> Tensor:
    """[..., S, S, 3] -> [..., 3, S, S] as a view (no copy)."""
    return pixels.movedim(-1, -3)


@functools.cache
def _affine(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float32)
    shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], dtype=torch.float32)
    return scale.view(1, 3, 1, 1), shift.view(1, 3, 1, 1)


class FastEvalTransform:
    """`eval_transform`'s result by the fast path: a decoded image -> normalised [3, S, S].

    The service recognises it and also decodes JPEGs in draft mode (see
    `service.classify.images`)."""

    def __init__(self, cfg: PreprocessConfig) -> None:
        check_resize_mode(cfg)
        self.config = cfg

    def __call__(self, image: Image.Image) -> Tensor:
        pixels = torch.from_numpy(fast_pixels(image, self.config))  # [S, S, 3] uint8
        return normalise(to_channels_first(pixels[None]), self.config)[0]


DASSL_CROP_SCALE = (0.08, 1.0)  # Dassl's RandomResizedCrop default, used by every release


def train_transform(
    cfg: PreprocessConfig, scale: tuple[float, float] = DASSL_CROP_SCALE
) -> ImageTransform:
    """CoOp's few-shot augmentation: random resized crop (area `scale`) and horizontal flip."""
    from torchvision.transforms import v2 as T

    low, high = scale
    if not 0 < low <= high <= 1:
        raise ConfigError(f"crop scale must satisfy 0 < low <= high <= 1, got {scale}")
    return T.Compose(
        [
            T.Lambda(_to_rgb),
            T.RandomResizedCrop(
                cfg.size, scale=scale, interpolation=interpolation_mode(cfg), antialias=True
            ),
            T.RandomHorizontalFlip(),
            *_to_normalised_tensor(cfg),
        ]
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")
