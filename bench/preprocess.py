"""Preprocessing cost per image on one core: the reference transform against the fast path
(not a test; prints a table, optionally writes JSON).

Each input is decoded from its encoded bytes and brought to normalised [3, S, S] pixels, as the
service does for a request:

  reference  decode_image (full decode, EXIF) + models.preprocess.eval_transform
  fast       prepare_image with FastEvalTransform (draft-mode JPEG decode, crop before resize,
             uint8) + the batch normalisation, as ImagePreparer runs them

The photos are synthetic but photo-like (smooth gradients, shapes, sensor noise), encoded at
JPEG quality 90 (a 12 MP one is about 2 MB, like a phone photo). torch and OpenMP use one
thread: the figure is CPU milliseconds per image, i.e. per core (the calling
thread's own CPU time, robust on a shared machine); wall-clock medians are printed beside it.

    python bench/preprocess.py                   # S = 224 (ViT-B/16), ~1 minute
    python bench/preprocess.py --size 64 --json out.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from promptserve.models.backbone import PreprocessConfig
from promptserve.models.preprocess import FastEvalTransform, eval_transform, normalise
from promptserve.service.classify.decoding import decode_image, prepare_image

MAX_PIXELS = 25_000_000
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
INPUTS = [  # (label, width, height, format)
    ("12 MP JPEG", 4032, 3024, "JPEG"),
    ("2000x1500 JPEG", 2000, 1500, "JPEG"),
    ("500x375 JPEG", 500, 375, "JPEG"),
    ("1024x768 PNG", 1024, 768, "PNG"),
]


def synthetic_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth light gradients, a few shapes and mild sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y /= height
    x /= width
    sky = np.stack([120 + 90 * y, 150 + 60 * x, 200 - 80 * y * x], axis=-1)
    image = Image.fromarray(sky.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.05, 0.25) * min(width, height)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 4.5, (height, width, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def encoded(width: int, height: int, fmt: str) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": 90} if fmt == "JPEG" else {}
    synthetic_photo(width, height).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def ms_per_call(fn: Callable[[], object], seconds: float, min_runs: int = 5) -> tuple[float, float]:
    """Median (wall, CPU) milliseconds per call. The CPU time is this thread's own, which is
    the cost per core even on a busy shared machine (everything runs on this one thread)."""
    fn()  # warm-up
    wall, cpu = [], []
    deadline = time.perf_counter() + seconds
    while len(wall) < min_runs or time.perf_counter() < deadline:
        started, started_cpu = time.perf_counter(), time.thread_time()
        fn()
        cpu.append(1000 * (time.thread_time() - started_cpu))
        wall.append(1000 * (time.perf_counter() - started))
    return statistics.median(wall), statistics.median(cpu)


def measure(size: int, seconds: float) -> list[dict[str, object]]:
    cfg = PreprocessConfig(size=size, mean=OPENAI_MEAN, std=OPENAI_STD)
    reference, fast = eval_transform(cfg), FastEvalTransform(cfg)
    rows = []
    for label, width, height, fmt in INPUTS:
        data = encoded(width, height, fmt)

        def run_reference(data: bytes = data) -> torch.Tensor:
            return reference(decode_image(data, MAX_PIXELS, resize_to=size))

        def run_fast(data: bytes = data) -> torch.Tensor:
            return normalise(prepare_image(data, fast, MAX_PIXELS)[None], cfg)[0]

        difference = (run_reference() - run_fast()).abs().mean().item()
        (ref_wall, ref_ms), (fast_wall, fast_ms) = (
            ms_per_call(run_reference, seconds),
            ms_per_call(run_fast, seconds),
        )
        rows.append(
            {
                "input": label,
                "bytes": len(data),
                "reference_ms": round(ref_ms, 2),  # CPU time
                "fast_ms": round(fast_ms, 2),
                "speed_up": round(ref_ms / fast_ms, 2),
                "reference_wall_ms": round(ref_wall, 2),
                "fast_wall_ms": round(fast_wall, 2),
                "mean_abs_diff": round(difference, 4),  # in normalised pixel units
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224, help="model input side S")
    parser.add_argument("--seconds", type=float, default=3.0, help="per input and path")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = measure(args.size, args.seconds)
    print(f"\nCPU ms per image (torch/OMP threads 1), to {args.size} px, median; wall ms after")
    print(
        f"{'input':<16} {'MB':>5} {'reference':>10} {'fast':>8} {'x':>6} {'|diff|':>7}"
        f" {'wall ref':>9} {'wall fast':>9}"
    )
    for row in rows:
        mb = int(row["bytes"]) / 1e6  # type: ignore[call-overload]
        print(
            f"{row['input']:<16} {mb:>5.2f} {row['reference_ms']:>10.1f} {row['fast_ms']:>8.1f}"
            f" {row['speed_up']:>6.1f} {row['mean_abs_diff']:>7.4f}"
            f" {row['reference_wall_ms']:>9.1f} {row['fast_wall_ms']:>9.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
