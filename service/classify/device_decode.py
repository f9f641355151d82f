"""Batched JPEG decoding on the engine's device (nvJPEG through torchvision on CUDA).

The header checks of `service.classify.images` (pixel limit, long strips) run first on the CPU,
from the header alone; then all JPEGs of a request are decoded in one `decode_jpeg` call on the
device, turned upright from their EXIF orientation, resized with the reference's geometry
(whole image, antialiased, then centre crop or pad) and kept uint8 until `normalise`, on the
device: the pixels cross the bus once, as compressed bytes. Images that are not JPEGs, or that
the device decoder refuses (CMYK, some progressive files, corrupt data), take the CPU path, so
a bad image still gets the CPU path's precise 400.

nvJPEG is ordered explicitly (`decode_on_device`): torchvision decodes on a stream of its own
that it never orders after the caller's queued work, so on the default stream the caching
allocator could hand it a block another request's kernels still read (wrong pixels, silently;
pytorch/vision#9606 on Hopper). Decoding runs on one private stream, under one lock, that
waits for the caller's stream; the caller's stream then waits for it, and every output is
recorded on the caller's stream, so its block is not reused while the caller still reads it.
Every fallback to the CPU path is logged and counted (`decode_fallbacks`, a metric).

The same code runs on the CPU (`device="cpu"`), which is how it is tested without a GPU.
torchvision is imported on the first decode, not with the module: a service that decodes on the
CPU never loads it (nor torch's compiler, which it brings).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import torch
from torch import Tensor

from promptserve.models.backbone import PreprocessConfig
from promptserve.models.preprocess import check_resize_mode, interpolation_mode, resized_size
from promptserve.service.classify.decoding import decode_base64, exif_orientation, open_checked

log = logging.getLogger(__name__)

_decode_lock = threading.Lock()  # one nvJPEG call at a time on the private stream
_streams: dict[torch.device, torch.cuda.Stream] = {}
_fallbacks = 0  # requests handed back to the CPU decoder, for the metric


def decode_fallbacks() -> int:
    """How many requests' JPEGs the device decoder refused in this process."""
    return _fallbacks


def upright(pixels: Tensor, orientation: int) -> Tensor:
    """[C, H, W] as stored -> as displayed, for an EXIF orientation 1-8 (PIL's exif_transpose)."""
    if orientation == 2:
        return pixels.flip(-1)
    if orientation == 3:
        return pixels.flip(-2, -1)
    if orientation == 4:
        return pixels.flip(-2)
    if orientation == 5:
        return pixels.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(pixels, -1, (-2, -1))
    if orientation == 7:
        return pixels.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(pixels, 1, (-2, -1))
    return pixels


def resize_on_device(pixels: Tensor, cfg: PreprocessConfig) -> Tensor:
    """An upright uint8 [3, H, W] -> the reference's uint8 [3, S, S], on its own device."""
    from torchvision.transforms.v2 import functional as TF

    height, width = pixels.shape[-2:]
    new_w, new_h = resized_size(width, height, cfg)
    if (new_w, new_h) != (width, height):
        pixels = TF.resize(pixels, [new_h, new_w], interpolation_mode(cfg), antialias=True)
    return TF.center_crop(pixels, [cfg.size, cfg.size])  # pads with black when smaller


def split_jpegs(
    images: Sequence[bytes | str], cfg: PreprocessConfig, max_pixels: int
) -> tuple[list[int], list[bytes], list[int]]:
    """Check every image's header; returns (indices of JPEGs, their bytes, their EXIF
    orientations). The first image over a limit raises, before anything is decoded."""
    indices, datas, orientations = [], [], []
    for index, item in enumerate(images):
        data = decode_base64(item, index) if isinstance(item, str) else item
        probe = open_checked(data, max_pixels, index, cfg.size)
        if probe.format == "JPEG" and probe.mode in ("RGB", "L"):
            indices.append(index)
            datas.append(data)
            orientations.append(exif_orientation(probe))
        probe.close()
    return indices, datas, orientations


def decode_jpegs(
    datas: Sequence[bytes], orientations: Sequence[int], cfg: PreprocessConfig, device: str
) -> Tensor | None:
    """JPEG bytes -> uint8 [n, 3, S, S] on `device`, decoded in one call; None when the
    decoder refuses any of them (the caller falls back to the CPU path)."""
    check_resize_mode(cfg)
    global _fallbacks
    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
    try:
        decoded = decode_on_device(encoded, device)
    except RuntimeError as exc:  # CMYK, some progressive files, no nvJPEG, out of memory
        with _decode_lock:
            _fallbacks += 1
        log.warning("device decoding refused %d JPEG(s), using the CPU: %s", len(datas), exc)
        return None
    return torch.stack(
        [resize_on_device(upright(p, o), cfg) for p, o in zip(decoded, orientations, strict=True)]
    )


def decode_on_device(encoded: list[Tensor], device: str) -> list[Tensor]:
    """Encoded JPEGs -> uint8 [3, H, W] each on `device`; on CUDA ordered with the caller's
    stream (see the module's docstring). `device` goes to torchvision as given: it keeps one
    decoder per device string."""
    from torchvision.io import ImageReadMode, decode_jpeg

    where = torch.device(device)
    if where.type != "cuda":
        return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)  # type: ignore[no-any-return]
    caller = torch.cuda.current_stream(where)
    with _decode_lock:
        stream = _streams.get(where)
        if stream is None:
            stream = _streams[where] = torch.cuda.Stream(where)
        stream.wait_stream(caller)
        with torch.cuda.stream(stream):
            decoded: list[Tensor] = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
        caller.wait_stream(stream)
        for pixels in decoded:
            pixels.record_stream(caller)
    return decoded
