"""Steps 5-10 of `bench/gpu_check.py`: the serving path (decoding, the batcher, memory, the
TensorRT cache), training with a pinned job, and a short bench run; see `gpu_check_steps`."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from gpu_check_steps import (
    FIRST_STEPS,
    REPO,
    Check,
    SkippedStepError,
    command_output,
    jpeg_bytes,
    sync,
)
from gpu_pinned_child import pinned_child
from PIL import Image

from promptserve.models.backbone import PreprocessConfig
from promptserve.models.classifier import load_classifier
from promptserve.models.engines import ONNX_FILE, OnnxEngine, OnnxOptions
from promptserve.models.providers import tensorrt_problem

DECODE_MAX_MEAN_ABS = 3.0  # uint8 levels: nvJPEG's IDCT and the GPU resize against PIL's


# --- 5. decode coverage, 6. concurrency -------------------------------------------------------


def decode_cases() -> dict[str, bytes]:
    exif = Image.Exif()
    cases = {
        "420": jpeg_bytes(640, 480, subsampling=2),
        "444": jpeg_bytes(640, 480, subsampling=0),
        "progressive": jpeg_bytes(640, 480, progressive=True),
        "grey": jpeg_bytes(640, 480, mode="L"),
        "tiny": jpeg_bytes(16, 12),
        "cmyk": jpeg_bytes(320, 240, mode="CMYK"),
    }
    for orientation in (6, 8):
        exif[0x0112] = orientation
        cases[f"exif{orientation}"] = jpeg_bytes(640, 480, exif=exif.tobytes())
    return cases


def decode(check: Check) -> dict[str, Any]:
    from promptserve.models.preprocess import FastEvalTransform
    from promptserve.service.classify import device_decode
    from promptserve.service.classify.images import prepare_image

    cfg = PreprocessConfig(size=224, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    transform, limit = FastEvalTransform(cfg), 25_000_000
    result: dict[str, Any] = {"failures": []}
    before = device_decode.decode_fallbacks()
    for kind, data in decode_cases().items():
        cpu = prepare_image(data, transform, limit).float()  # uint8 [3, S, S]
        indices, datas, orientations = device_decode.split_jpegs([data], cfg, limit)
        if not indices:
            result[kind] = "CPU path (not sent to the device decoder)"
            continue
        decoded = device_decode.decode_jpegs(datas, orientations, cfg, check.device)
        if decoded is None:
            result[kind] = "refused by the device decoder: CPU fallback"
            continue
        mean_abs = float((decoded[0].float().cpu() - cpu).abs().mean())
        result[kind] = {"mean_abs": round(mean_abs, 3)}
        if mean_abs > DECODE_MAX_MEAN_ABS:
            result["failures"].append(kind)
    result["fallbacks_counted"] = device_decode.decode_fallbacks() - before
    return result


def concurrency(check: Check) -> dict[str, Any]:
    import httpx

    from promptserve.service.app import create_app
    from promptserve.service.settings import Settings

    version = check.version("coop")
    settings = Settings(
        store=check.store,
        default_classifier=version.parent.name,
        create_default=False,
        device="cuda" if check.cuda else "cpu",
        engine="onnx",
        api_key=None,
        max_batch_size=32,
        max_wait_ms=10.0,
        decode_threads=4,
        device_decode=check.cuda,
    )
    images = [jpeg_bytes(320, 240, seed) for seed in range(64)]

    async def run() -> dict[str, Any]:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            engine = app.state.runtime.local  # this process runs the engine
            state = await engine.wait_ready(timeout=300)
            if state != "ready":
                raise RuntimeError(f"the service did not become ready: {engine.failure}")
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:

                async def post(image: bytes) -> Any:
                    files = [("images", ("i.jpg", image, "image/jpeg"))]
                    response = await client.post("/classify", files=files, data={"top_k": "3"})
                    response.raise_for_status()
                    return response.json()["predictions"][0]

                serial = [await post(image) for image in images]
                started = time.perf_counter()
                together = await asyncio.gather(*(post(image) for image in images))
                seconds = time.perf_counter() - started
                metrics = (await client.get("/metrics")).text
        differ = [
            i
            for i, (a, b) in enumerate(zip(serial, together, strict=True))
            if [p["label"] for p in a] != [p["label"] for p in b]
            or max(abs(p["score"] - q["score"]) for p, q in zip(a, b, strict=True)) > 1e-4
        ]
        batches = [
            line for line in metrics.splitlines() if line.startswith("promptserve_batch_size_")
        ]
        return {
            "requests": 64,
            "concurrent_seconds": round(seconds, 3),
            "differ": differ,
            "batch_metrics": batches[-2:],
            "failures": [f"request {i}" for i in differ],
        }

    return asyncio.run(run())


# --- 7. memory, 8. TensorRT cache -------------------------------------------------------------


def memory(check: Check) -> dict[str, Any]:
    count, batches = (2, [1, 2]) if check.smoke else (10, [1, 2, 4, 8, 16, 32])
    size = check.model().preprocess.size
    rows, loaded = [], []
    for seed in range(count):
        loaded.append(load_classifier(check.version("zeroshot", 1, seed), device=check.device))
        rows.append({"loaded": len(loaded), **device_memory(check)})
    first_call = {}
    for batch in batches:
        pixels = torch.randn(batch, 3, size, size, device=check.device)
        timings = []
        for _ in range(2):  # the first call of a shape, then a warm one
            sync(check)
            started = time.perf_counter()
            loaded[0].embed(pixels)
            sync(check)
            timings.append(round((time.perf_counter() - started) * 1000, 2))
        first_call[batch] = {"first_ms": timings[0], "warm_ms": timings[1], **device_memory(check)}
    return {"per_load": rows, "per_batch": first_call}


def device_memory(check: Check) -> dict[str, Any]:
    if not check.cuda:
        return {}
    free, total = torch.cuda.mem_get_info()
    return {
        "used_mib": (total - free) >> 20,
        "torch_reserved_mib": torch.cuda.memory_reserved() >> 20,
    }


def tensorrt(check: Check) -> dict[str, Any]:
    check.needs_cuda("TensorRT")
    problem = tensorrt_problem()
    if problem is not None:
        raise SkippedStepError(f"TensorRT does not load: {problem}")
    options = OnnxOptions(tensorrt=True, trt_cache_dir=check.scratch / "trt", max_batch_size=4)
    size = check.model().preprocess.size
    pixels = torch.randn(4, 3, size, size, device=check.device)
    outs = [
        OnnxEngine(check.version("zeroshot", 1, seed) / ONNX_FILE, check.device, options=options)(
            pixels
        )
        for seed in (0, 1)
    ]
    same = bool(torch.equal(outs[0], outs[1]))
    caches = sorted(p.name for p in (check.scratch / "trt").iterdir())
    return {
        "identical_embeddings": same,
        "cache_folders": caches,
        "failures": ["collision"] if same else [],
    }


# --- 9. training and a pinned job, 10. bench --------------------------------------------------


def training(check: Check) -> dict[str, Any]:
    check.needs_cuda("bf16 training")
    from promptserve.training.api import fit_learner
    from promptserve.training.request import TrainRequest

    request = TrainRequest(
        method="coop",
        data="synthetic:color-shape-base?n=5&seed=1&size=32",
        store=check.store,
        name="trained",
        backbone="tiny",
        shots=2,
        overrides={"epochs": 2, "batch_size": 4},
        device=check.device,
    )
    fitted = fit_learner(request)
    result = {
        "precision": "bf16 autocast (auto on CUDA)",
        "losses": [round(x, 4) for x in fitted.result.losses],
        "seconds": round(fitted.result.seconds, 2),
    }
    result["failures"] = [] if all(np.isfinite(fitted.result.losses)) else ["loss not finite"]
    return result


def pinned_job(check: Check) -> dict[str, Any]:
    gpus = torch.cuda.device_count() if check.cuda else 2
    target = f"cuda:{gpus - 1}"  # the last GPU: on a multi-GPU host not GPU 0
    context = multiprocessing.get_context("spawn")
    queue, go = context.Queue(), context.Event()
    process = context.Process(target=pinned_child, args=(queue, go, target, check.cuda))
    process.start()
    try:
        seen = queue.get(timeout=120)
        apps = (
            command_output(
                ["nvidia-smi", "--query-compute-apps=pid,gpu_bus_id", "--format=csv,noheader"]
            )
            if check.cuda
            else "no GPU"
        )
    finally:
        go.set()
        process.join(30)
    failures = [] if seen["visible"] == str(gpus - 1) else ["not pinned"]
    return {"asked": target, "seen": seen, "compute_apps": apps, "failures": failures}


def bench(check: Check) -> dict[str, Any]:
    check.needs_cuda("bench/gpu.py")
    out = check.out_dir / "gpu.json"
    command = [sys.executable, str(REPO / "bench" / "gpu.py"), "--backbone", check.backbone]
    command += ["--seconds", "2", "--batch", "1", "32", "--clients", "1", "16"]
    command += ["--variants", "copy", "bound", "fp16", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    if done.returncode != 0:
        return {"failures": ["bench/gpu.py"], "stderr": done.stderr[-1500:]}
    rows = json.loads(out.read_text())["rows"]
    return {"rows": rows, "failures": []}


STEPS: dict[str, Callable[[Check], dict[str, Any]]] = {
    **FIRST_STEPS,
    "decode": decode,
    "concurrency": concurrency,
    "memory": memory,
    "tensorrt": tensorrt,
    "training": training,
    "pinned_job": pinned_job,
    "bench": bench,
}
