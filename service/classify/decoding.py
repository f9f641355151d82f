"""Decoding untrusted image bytes on the CPU: base64, checked headers, upright pixels.

The declared size is read from the header (``Image.open`` decodes no pixels) and checked
against the pixel limit before anything is decoded, so a decompression bomb (a few hundred
bytes declaring 20000 x 20000) costs microseconds and a 413, not gigabytes. With a
`FastEvalTransform` (what a loaded classifier carries) a JPEG is decoded in draft mode
(`decode_for_model`) and its pixels stay uint8 (see `models.preprocess`).

These primitives sit below `service.classify.device_decode` (which reuses the header checks)
and `service.classify.images` (which runs them on a pool); job intake decodes with them too.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from promptserve.models.backbone import PreprocessConfig
from promptserve.models.preprocess import (
    FastEvalTransform,
    ImageTransform,
    fast_pixels,
    to_channels_first,
)
from promptserve.service.errors import ImageTooLargeError, InvalidImageError

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError)
EXIF_ORIENTATION = 0x0112
SWAPS_AXES = frozenset({5, 6, 7, 8})  # orientations that turn the image by 90 degrees


_URL_SAFE = str.maketrans("-_", "+/")
_WHITESPACE = str.maketrans("", "", " \t\r\n\f\v")


def decode_base64(text: str, index: int) -> bytes:
    """Base64 (optionally a ``data:image/...;base64,`` URL) -> bytes; 400 when not.

    What encoders commonly write is accepted: lines wrapped at 76 characters (``base64``'s
    default), the URL-safe alphabet (``-_``) and missing ``=`` padding. Anything else outside
    the alphabet is refused, naming the first offending character.
    """
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    text = text.translate(_WHITESPACE).translate(_URL_SAFE)
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImageError(f"image {index} is not valid base64: {_why(text)}") from None


def _why(text: str) -> str:
    """What is wrong with base64 text that did not decode, in a few words."""
    for char in text:
        if not (char.isascii() and (char.isalnum() or char in "+/=")):
            return f"{char!r} is not a base64 character"
    return "its length or padding is wrong"


def decode_all(texts: Sequence[str]) -> list[bytes]:
    """Base64 strings -> bytes; the first bad one is a 400 naming its index."""
    return [decode_base64(text, index) for index, text in enumerate(texts)]


def decode_image(
    data: bytes, max_pixels: int, index: int = 0, resize_to: int | None = None
) -> Image.Image:
    """Decode untrusted image bytes, refusing bombs before decoding and corrupt data after.

    `resize_to`: the short side the image will be resized to; the resized image must stay
    within `max_pixels` too, so a long thin strip (1,000,000 x 16, a few KB) is refused before
    it is decoded instead of growing into gigabytes on the way to the model. The EXIF
    orientation of a photo is applied, so a rotated phone JPEG is seen upright.
    """
    probe = open_checked(data, max_pixels, index, resize_to)
    load_upright(probe, index)
    return probe


def open_checked(
    data: bytes, max_pixels: int, index: int = 0, resize_to: int | None = None
) -> Image.Image:
    """The image's header, checked against the limits (see `decode_image`); no pixels decoded."""
    if not data:
        raise InvalidImageError(f"image {index} is empty")
    try:
        probe = Image.open(io.BytesIO(data))  # header only
    except Image.DecompressionBombError as exc:  # PIL's own, higher limit
        raise ImageTooLargeError(f"image {index}: {exc}") from None
    except (UnidentifiedImageError, *_DECODE_ERRORS):
        raise InvalidImageError(f"image {index} is not an image in a format we can read") from None
    width, height = probe.size
    if width * height > max_pixels:
        probe.close()
        raise ImageTooLargeError(
            f"image {index} declares {width}x{height} = {width * height} pixels; "
            f"the limit is {max_pixels}"
        )
    if resize_to is not None:
        check_resized_pixels(width, height, resize_to, max_pixels, index)
    return probe


def load_upright(probe: Image.Image, index: int) -> None:
    """Decode the pixels of an opened image and apply its EXIF orientation, in place."""
    try:
        probe.load()  # decodes: a truncated or corrupt stream fails here
        ImageOps.exif_transpose(probe, in_place=True)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image {index}: {exc}") from None
    except _DECODE_ERRORS:
        raise InvalidImageError(f"image {index} is truncated or corrupt") from None


def exif_orientation(probe: Image.Image) -> int:
    """The EXIF orientation tag (1-8; 1 when absent or unreadable), read from the header."""
    try:
        value = probe.getexif().get(EXIF_ORIENTATION, 1)
    except _DECODE_ERRORS:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def decode_for_model(
    data: bytes, cfg: PreprocessConfig, max_pixels: int, index: int = 0
) -> tuple[Image.Image, tuple[int, int]]:
    """`decode_image` for the fast path: a JPEG is decoded in draft mode, scaled down by 2, 4
    or 8 in the DCT domain while both sides stay at least `cfg.size` (the full-size decode and
    most of the resize are skipped). Returns the upright image and its upright full size."""
    probe = open_checked(data, max_pixels, index, cfg.size)
    full = probe.size
    if probe.format == "JPEG":
        probe.draft(probe.mode, (cfg.size, cfg.size))
        if exif_orientation(probe) in SWAPS_AXES:
            full = (full[1], full[0])
    load_upright(probe, index)
    return probe, full


def check_resized_pixels(
    width: int, height: int, short_side: int, max_pixels: int, index: int
) -> None:
    """ImageTooLargeError when resizing the short side to `short_side` exceeds `max_pixels`."""
    short, long = sorted((max(width, 1), max(height, 1)))
    resized = max(long * short_side // short, 1) * short_side if short < short_side else 0
    if resized > max_pixels:
        raise ImageTooLargeError(
            f"image {index} is {width}x{height}: scaled to a {short_side} px short side it would "
            f"be {resized} pixels, over the limit of {max_pixels}; "
            f"crop it to an aspect ratio of at most {max_pixels // short_side**2}:1"
        )


def prepare_image(
    data: bytes | str, transform: ImageTransform, max_pixels: int, index: int = 0, size: int = 0
) -> Tensor:
    """Image bytes (or their base64 text) -> pixels [3, S, S] (`size` = S): normalised floats,
    or, when `transform` is a `FastEvalTransform`, uint8 for `normalise` to finish on the batch."""
    if isinstance(data, str):
        data = decode_base64(data, index)
    if isinstance(transform, FastEvalTransform):
        image, full = decode_for_model(data, transform.config, max_pixels, index)
    else:
        image = decode_image(data, max_pixels, index, resize_to=size or None)
    try:
        if isinstance(transform, FastEvalTransform):
            return to_channels_first(torch.from_numpy(fast_pixels(image, transform.config, full)))
        return transform(image)
    except _DECODE_ERRORS as exc:  # e.g. a mode the converter cannot handle
        raise InvalidImageError(f"image {index} cannot be converted to RGB: {exc}") from None
    finally:
        image.close()
