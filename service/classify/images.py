"""Untrusted bytes -> checked PIL image -> normalised pixels, on a thread pool.

The declared size is read from the header (``Image.open`` decodes no pixels) and checked
against the pixel limit before anything is decoded, so a decompression bomb (a few hundred
bytes declaring 20000 x 20000) costs microseconds and a 413, not gigabytes. Decoding and
preprocessing hold the GIL only in part (PIL and torchvision release it in their C loops); they
run on a pool so the event loop keeps serving while they work.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from models.preprocess import ImageTransform
from service.errors import ImageTooLargeError, InvalidImageError

log = logging.getLogger(__name__)

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError)


def decode_base64(text: str, index: int) -> bytes:
    """Standard base64 (optionally a ``data:image/...;base64,`` URL) -> bytes; 400 when not."""
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImageError(f"image {index} is not valid base64") from None


def decode_image(data: bytes, max_pixels: int, index: int = 0) -> Image.Image:
    """Decode untrusted image bytes, refusing bombs before decoding and corrupt data after."""
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
    try:
        probe.load()  # decodes: a truncated or corrupt stream fails here
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image {index}: {exc}") from None
    except _DECODE_ERRORS:
        raise InvalidImageError(f"image {index} is truncated or corrupt") from None
    return probe


def prepare_image(
    data: bytes | str, transform: ImageTransform, max_pixels: int, index: int = 0
) -> Tensor:
    """Image bytes (or their base64 text) -> normalised pixels [3, S, S]."""
    if isinstance(data, str):
        data = decode_base64(data, index)
    image = decode_image(data, max_pixels, index)
    try:
        return transform(image)
    except _DECODE_ERRORS as exc:  # e.g. a mode the converter cannot handle
        raise InvalidImageError(f"image {index} cannot be converted to RGB: {exc}") from None
    finally:
        image.close()


class ImagePreparer:
    """Decodes and preprocesses request images on a bounded thread pool."""

    def __init__(self, threads: int, max_pixels: int) -> None:
        self.max_pixels = max_pixels
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")

    async def prepare(self, images: Sequence[bytes | str], transform: ImageTransform) -> Tensor:
        """All images of one request (bytes or base64 text) -> pixels [n, 3, S, S]; the first
        bad image fails it."""
        loop = asyncio.get_running_loop()
        tasks = [
            loop.run_in_executor(self._pool, prepare_image, data, transform, self.max_pixels, i)
            for i, data in enumerate(images)
        ]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return torch.stack([r for r in results if isinstance(r, Tensor)])

    async def decode_base64(self, texts: Sequence[str]) -> list[bytes]:
        """Base64 strings -> bytes, off the event loop (a body holds megabytes of them)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, lambda: [decode_base64(t, i) for i, t in enumerate(texts)]
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
