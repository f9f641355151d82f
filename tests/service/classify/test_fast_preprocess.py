"""The service's fast preprocessing (draft-mode JPEG decoding, crop before resize, uint8 until a
fused normalisation) against the reference `eval_transform`, on photos of many sizes, formats,
modes and orientations: `mini`'s embeddings agree (cosine >= 0.995) and so does its top-1."""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from promptserve.models.backbone import PreprocessConfig, load_backbone
from promptserve.models.errors import ConfigError
from promptserve.models.methods import create_method
from promptserve.models.preprocess import (
    RESIZE_MODES,
    FastEvalTransform,
    eval_transform,
    fast_pixels,
    normalise,
)
from promptserve.service.classify.decoding import decode_image, prepare_image
from promptserve.service.classify.device_decode import decode_jpegs, split_jpegs
from promptserve.service.classify.images import ImagePreparer
from promptserve.service.errors import ImageTooLargeError, InvalidImageError
from promptserve.training.synthetic.world import COLOURS, SHAPES, render, sample_scene

MAX_PIXELS = 25_000_000
COLOUR_NAMES = list(COLOURS)[:6]
SHAPE_NAMES = list(SHAPES)[:6]

# (width, height, format, mode, EXIF orientation): the stored image; 6 and 8 store a portrait
# photo sideways, as phones do
PHOTOS = [
    (4032, 3024, "JPEG", "RGB", 1),  # 12 MP phone photo
    (4032, 3024, "JPEG", "RGB", 6),  # the same, shot in portrait
    (2000, 1500, "JPEG", "RGB", 1),
    (1500, 2000, "JPEG", "RGB", 1),
    (1333, 1000, "JPEG", "RGB", 8),
    (500, 375, "JPEG", "RGB", 1),
    (375, 500, "JPEG", "RGB", 3),
    (1920, 1080, "JPEG", "L", 1),  # greyscale
    (3000, 700, "JPEG", "RGB", 1),  # panorama
    (300, 300, "JPEG", "RGB", 1),
    (48, 40, "JPEG", "RGB", 1),  # smaller than the input: enlarged
    (1200, 900, "PNG", "RGB", 1),
    (800, 1000, "PNG", "RGBA", 1),
    (700, 700, "PNG", "P", 1),  # palette
    (640, 480, "PNG", "L", 1),
]


def photo(width: int, height: int, seed: int) -> tuple[Image.Image, int]:
    """A shapes-world scene filling the centre of a `width` x `height` frame, with sensor
    noise; returns the image and the index of its class."""
    rng = np.random.default_rng(seed)
    colour, shape = COLOUR_NAMES[seed % 6], SHAPE_NAMES[(seed // 6 + seed) % 6]
    scene = sample_scene(rng, shape=shape, colour=colour, style="filled", background="plain")
    scene = replace(scene, centre=(0.5, 0.5), radius=0.3, rotation=0.0)
    side = min(width, height)
    tile = render(scene, 128).resize((side, side), Image.Resampling.BICUBIC)
    frame = Image.new("RGB", (width, height), (scene.tone,) * 3)
    frame.paste(tile, ((width - side) // 2, (height - side) // 2))
    pixels = np.asarray(frame, dtype=np.float32) + rng.normal(0, 6, (height, width, 3))
    label = COLOUR_NAMES.index(colour) * len(SHAPE_NAMES) + SHAPE_NAMES.index(shape)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8)), label


def encode(image: Image.Image, fmt: str, mode: str, orientation: int) -> bytes:
    if orientation in (6, 8):  # stored sideways; the EXIF tag turns it upright
        image = image.transpose(
            Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270
        )
    elif orientation == 3:
        image = image.transpose(Image.Transpose.ROTATE_180)
    image = image.convert(mode)
    buffer = io.BytesIO()
    options: dict[str, Any] = {"quality": 90} if fmt == "JPEG" else {}
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def mini() -> Any:
    return create_method("zeroshot", load_backbone("mini")).eval()


@pytest.fixture(scope="module")
def photos() -> list[tuple[bytes, int, str]]:
    out = []
    for seed, (width, height, fmt, mode, orientation) in enumerate(PHOTOS):
        upright = (height, width) if orientation in (6, 8) else (width, height)
        image, label = photo(*upright, seed)
        out.append((encode(image, fmt, mode, orientation), label, f"{width}x{height} {fmt} {mode}"))
    return out


def test_fast_path_matches_the_reference_on_mini(mini: Any, photos: list[Any]) -> None:
    cfg = mini.preprocess
    reference, fast = eval_transform(cfg), FastEvalTransform(cfg)
    ref_pixels = torch.stack([reference(decode_image(data, MAX_PIXELS)) for data, _, _ in photos])
    uint8 = torch.stack(
        [prepare_image(data, fast, MAX_PIXELS, i) for i, (data, _, _) in enumerate(photos)]
    )
    assert uint8.dtype == torch.uint8
    fast_pixels_ = normalise(uint8, cfg)
    names = [f"a photo of a {c} {s}." for c in COLOUR_NAMES for s in SHAPE_NAMES]
    with torch.no_grad():
        classes = mini.encode_classes(names)  # [C, D]
        ref_emb, fast_emb = mini.encode_images(ref_pixels), mini.encode_images(fast_pixels_)
    cosine = torch.nn.functional.cosine_similarity(ref_emb, fast_emb)
    for (_, _, what), value in zip(photos, cosine.tolist(), strict=True):
        assert value >= 0.995, f"{what}: cosine {value:.4f}"
    ref_top, fast_top = (ref_emb @ classes.T).argmax(1), (fast_emb @ classes.T).argmax(1)
    assert torch.equal(ref_top, fast_top)
    labels = torch.tensor([label for _, label, _ in photos])
    assert (ref_top == labels).float().mean() > 0.5  # the photos are recognisable at all


def test_device_decode_path_matches_on_the_cpu(mini: Any, photos: list[Any]) -> None:
    cfg = mini.preprocess
    reference = eval_transform(cfg)
    datas = [data for data, _, _ in photos]
    indices, jpegs, orientations = split_jpegs(datas, cfg, MAX_PIXELS)
    assert len(indices) == sum(1 for p in PHOTOS if p[2] == "JPEG")
    decoded = decode_jpegs(jpegs, orientations, cfg, "cpu")
    assert decoded is not None
    ref = torch.stack([reference(decode_image(datas[i], MAX_PIXELS)) for i in indices])
    with torch.no_grad():
        cosine = torch.nn.functional.cosine_similarity(
            mini.encode_images(ref), mini.encode_images(normalise(decoded, cfg))
        )
    assert cosine.min() >= 0.995


@pytest.mark.parametrize("mode", RESIZE_MODES)
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
def test_undrafted_pixels_equal_the_reference(mode: str, interpolation: str) -> None:
    cfg = PreprocessConfig(
        size=32,
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.25, 0.3),
        interpolation=interpolation,
        resize_mode=mode,
    )
    reference, fast = eval_transform(cfg), FastEvalTransform(cfg)
    rng = np.random.default_rng(0)
    for width, height in [(32, 32), (32, 50), (301, 200), (200, 301), (20, 90), (640, 33)]:
        for image_mode in ("RGB", "L", "RGBA", "P"):
            array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            image = Image.fromarray(array).convert(image_mode)
            # at most one uint8 level apart (float rounding of the crop box)
            tolerance = 1.01 / (255 * min(cfg.std))
            assert (reference(image) - fast(image)).abs().max() <= tolerance


def test_unknown_resize_mode_is_refused() -> None:
    cfg = PreprocessConfig(size=32, mean=(0, 0, 0), std=(1, 1, 1), resize_mode="fill")
    with pytest.raises(ConfigError, match="resize mode"):
        eval_transform(cfg)
    with pytest.raises(ConfigError, match="resize mode"):
        fast_pixels(Image.new("RGB", (40, 40)), cfg)


def test_normalise_checks_its_input() -> None:
    cfg = PreprocessConfig(size=4, mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(ValueError, match="uint8"):
        normalise(torch.zeros(1, 3, 4, 4), cfg)


def test_fast_path_keeps_the_limits() -> None:
    fast = FastEvalTransform(PreprocessConfig(size=64, mean=(0, 0, 0), std=(1, 1, 1)))
    from tests.service.helpers import bomb_png, truncated_png

    with pytest.raises(ImageTooLargeError):
        prepare_image(bomb_png(), fast, MAX_PIXELS)
    with pytest.raises(ImageTooLargeError, match="aspect ratio"):
        prepare_image(bomb_png(1_562_500, 16), fast, MAX_PIXELS)
    with pytest.raises(InvalidImageError):
        prepare_image(truncated_png(), fast, MAX_PIXELS)
    with pytest.raises(ImageTooLargeError, match="aspect ratio"):
        split_jpegs([bomb_png(1_562_500, 16)], fast.config, MAX_PIXELS)


@pytest.mark.anyio
async def test_preparer_normalises_the_batch_once(photos: list[Any]) -> None:
    cfg = PreprocessConfig(size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    preparer = ImagePreparer(threads=2, max_pixels=MAX_PIXELS)
    try:
        datas = [data for data, _, _ in photos[5:8]]
        pixels = await preparer.prepare(datas, FastEvalTransform(cfg), cfg.size)
        reference = await preparer.prepare(datas, eval_transform(cfg), cfg.size)
    finally:
        preparer.close()
    assert pixels.dtype == torch.float32
    assert pixels.is_contiguous()
    assert pixels.shape == reference.shape == (3, 3, 64, 64)
    assert (pixels - reference).abs().mean() < 0.02
