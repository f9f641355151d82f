"""A request's images -> pixels [n, 3, S, S], decoded on a bounded thread pool.

Decoding and preprocessing hold the GIL only in part (PIL and torchvision release it in their C
loops); they run on a pool so the event loop keeps serving while they work. The classify path
takes the pixels as uint8 (`ImagePreparer.pixels`) and normalises them where the engine runs;
on CUDA, `service.classify.device_decode` can decode a request's JPEGs on the device instead.
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from PIL import Image
from torch import Tensor

from promptserve.models.preprocess import FastEvalTransform, ImageTransform, normalise
from promptserve.service.classify.decoding import decode_base64, prepare_image
from promptserve.service.classify.device_decode import decode_jpegs, split_jpegs
from promptserve.service.classify.memory import trim_after


class ImagePreparer:
    """Decodes and preprocesses request images on a bounded thread pool.

    `device`: where `prepare` puts its pixels (the engine's device); uint8 pixels of the fast
    path move there once and are normalised there. `device_decode`: on CUDA, decode a request's
    JPEGs in one batched nvJPEG call on the device (`service.classify.device_decode`).
    `inline_bytes`: a request of one image this small is decoded on the calling thread (the
    event loop): a 64 px PNG takes ~0.1 ms, less than the two thread hand-offs the pool would
    cost. Only if its header declares at most `inline_pixels` pixels, though: a 3 KB PNG may
    declare 25 Mpx, 230 ms of decoding that would stall every request on the loop.
    """

    def __init__(
        self,
        threads: int,
        max_pixels: int,
        device: str = "cpu",
        device_decode: bool = False,
        inline_bytes: int = 0,
        inline_pixels: int = 1_000_000,
    ) -> None:
        self.max_pixels = max_pixels
        self.device = torch.device(device)
        self.device_decode = device_decode and self.device.type == "cuda"
        self.inline_bytes = inline_bytes
        self.inline_pixels = inline_pixels
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")

    @property
    def pool(self) -> ThreadPoolExecutor:
        """The decode pool (request bodies of classify are parsed on it too)."""
        return self._pool

    async def prepare(
        self, images: Sequence[bytes | str], transform: ImageTransform, size: int
    ) -> Tensor:
        """All images of one request (bytes or base64 text) -> normalised pixels
        [n, 3, size, size] on `device`; the first bad image fails it."""
        pixels = await self.pixels(images, transform, size)
        if isinstance(transform, FastEvalTransform):  # uint8: move once, normalise there
            return normalise(pixels.to(self.device, non_blocking=True), transform.config)
        return pixels

    async def pixels(
        self, images: Sequence[bytes | str], transform: ImageTransform, size: int
    ) -> Tensor:
        """`prepare` without the last step: with a `FastEvalTransform` the pixels stay uint8
        [n, 3, size, size] (on `device` when decoded there, else on the CPU), for the engine
        to normalise where it runs."""
        loop = asyncio.get_running_loop()
        # the request's log context goes with each thread's work (one copy each: a context
        # is entered by one thread at a time)
        copy = contextvars.copy_context
        if self.device_decode and isinstance(transform, FastEvalTransform):
            return await loop.run_in_executor(
                self._pool, copy().run, self.prepare_on_device, images, transform
            )
        if len(images) == 1 and self._inline(images[0]):
            return prepare_image(images[0], transform, self.max_pixels, 0, size).unsqueeze(0)
        tasks = [
            loop.run_in_executor(
                self._pool, copy().run, self._decode, data, transform, self.max_pixels, i, size
            )
            for i, data in enumerate(images)
        ]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return torch.stack([r for r in results if isinstance(r, Tensor)])

    @staticmethod
    def _decode(
        data: bytes | str, transform: ImageTransform, max_pixels: int, index: int, size: int
    ) -> Tensor:
        """`prepare_image` on a pool thread, then the freed decode buffers handed back."""
        start = time.perf_counter()
        try:
            return prepare_image(data, transform, max_pixels, index, size)
        finally:
            trim_after(time.perf_counter() - start)

    def _inline(self, data: bytes | str) -> bool:
        """Whether to decode `data` on the event loop: small, and declaring few pixels."""
        if len(data) > self.inline_bytes:
            return False
        try:
            raw = decode_base64(data, 0) if isinstance(data, str) else data
            with Image.open(io.BytesIO(raw)) as probe:  # the header only
                width, height = probe.size
        except Exception:  # not an image, or broken: the pool's decode says why
            return False
        return width * height <= self.inline_pixels

    def prepare_on_device(
        self, images: Sequence[bytes | str], transform: FastEvalTransform
    ) -> Tensor:
        """The request's JPEGs decoded on the device in one call, the rest on the CPU:
        uint8 [n, 3, S, S] on the device."""
        cfg = transform.config
        indices, datas, orientations = split_jpegs(images, cfg, self.max_pixels)
        on_device = decode_jpegs(datas, orientations, cfg, str(self.device)) if datas else None
        done = dict(zip(indices, on_device, strict=True)) if on_device is not None else {}
        pixels = [
            done[i] if i in done else prepare_image(data, transform, self.max_pixels, i)
            for i, data in enumerate(images)
        ]
        return torch.stack([p.to(self.device) for p in pixels])

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
