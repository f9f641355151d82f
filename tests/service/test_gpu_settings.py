"""Settings of the GPU path and how they reach the engine and the image preparer; the CUDA
checks run only where CUDA is."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from promptserve.models.backbone import PreprocessConfig
from promptserve.models.devices import choose_device, cuda_device_problem
from promptserve.models.preprocess import FastEvalTransform, eval_transform
from promptserve.service.catalog import Catalog
from promptserve.service.classify import device_decode
from promptserve.service.classify.cache import ClassifierCache
from promptserve.service.classify.images import ImagePreparer
from promptserve.service.settings import Settings

CUDA = torch.cuda.is_available()
REPO = Path(__file__).resolve().parents[2]


def test_settings_choose_the_engine_options(tmp_path: Path) -> None:
    settings = Settings(store=tmp_path, onnx_tensorrt=True, onnx_io_binding=False, device="cuda")
    options = settings.onnx_options()
    assert options.tensorrt
    assert not options.io_binding
    assert not options.fp16
    assert options.trt_cache_dir == tmp_path / ".trt-cache"
    assert options.max_batch_size == settings.max_batch_size
    assert Settings(store=tmp_path).onnx_options().trt_cache_dir is None  # no TensorRT, no cache


def test_fp16_on_the_cpu_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="onnx_fp16 needs device cuda"):
        Settings(store=tmp_path, onnx_fp16=True, device="cpu")


def test_store_passes_the_options_to_the_engine(tiny_artifact: Path) -> None:
    from promptserve.models.engines import OnnxEngine, OnnxOptions

    store_root = tiny_artifact.parent.parent
    store = ClassifierCache(Catalog(store_root), onnx_options=OnnxOptions(io_binding=False))
    engine = store.get(tiny_artifact.parent.name, tiny_artifact.name).engine
    assert isinstance(engine, OnnxEngine)
    assert not engine.bound


def test_device_decode_is_for_cuda_only() -> None:
    assert not ImagePreparer(1, 1000, device="cpu", device_decode=True).device_decode


def _jpeg(width: int, height: int) -> bytes:
    rng = np.random.default_rng(width)
    buffer = io.BytesIO()
    array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(array).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.anyio
async def test_cuda_preparer_decodes_on_the_device() -> None:
    cfg = PreprocessConfig(size=224, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    images = [_jpeg(640, 480), _jpeg(300, 500), _png(), _jpeg(4032, 3024)]
    preparer = ImagePreparer(2, 25_000_000, device="cuda", device_decode=True)
    cpu = ImagePreparer(2, 25_000_000)
    try:
        pixels = await preparer.prepare(images, FastEvalTransform(cfg), cfg.size)
        reference = await cpu.prepare(images, eval_transform(cfg), cfg.size)
    finally:
        preparer.close()
        cpu.close()
    assert pixels.device.type == "cuda"
    assert pixels.dtype == torch.float32
    assert (pixels.cpu() - reference).abs().mean() < 0.05


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (200, 100), (10, 200, 30, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.skipif(cuda_device_problem("cuda") is None, reason="this host can serve on CUDA")
def test_serve_on_cuda_without_it_exits_at_once_naming_what_is_missing(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "promptserve.service.cli", "serve", "--store", str(tmp_path)]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTSERVE_")}
    environment |= {"PROMPTSERVE_DEVICE": "cuda", "PROMPTSERVE_PORT": "0", "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, timeout=60)
    assert done.returncode == 3, done.stderr.decode()
    assert time.monotonic() - started < 60
    message = done.stderr.decode()
    assert "PROMPTSERVE_DEVICE=cuda cannot run here: torch sees no CUDA GPU" in message
    assert "Traceback" not in message


@pytest.mark.anyio
async def test_auto_says_in_the_log_and_the_metrics_what_it_chose(
    client_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    choose_device.cache_clear()
    with caplog.at_level(logging.INFO, logger="promptserve.models.devices"):
        async with client_factory(device="auto") as (client, runtime):
            text = (await client.get("/metrics")).text
    assert runtime.local is not None
    choice = runtime.local.device_choice
    assert choice.asked == "auto"
    assert f"device auto: running on {'the CPU' if choice.device == 'cpu' else choice.device}" in (
        caplog.text
    )
    providers = ",".join(choice.providers)
    assert (
        f'promptserve_device_info{{asked="auto",device="{choice.device}",providers="{providers}"'
        in text
    )
    assert "promptserve_device_decode_fallbacks_total" in text


def test_every_device_decode_fallback_is_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = PreprocessConfig(size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    before = device_decode.decode_fallbacks()
    with caplog.at_level(logging.WARNING, logger="promptserve.service.classify.device_decode"):
        assert device_decode.decode_jpegs([b"\xff\xd8 not a jpeg"], [1], cfg, "cpu") is None
    assert device_decode.decode_fallbacks() == before + 1
    assert "device decoding refused 1 JPEG(s), using the CPU" in caplog.text


def test_the_gpu_memory_budget_is_split_over_the_engines_open_at_once(tmp_path: Path) -> None:
    settings = Settings(store=tmp_path, gpu_mem_budget_mib=1000, max_loaded_classifiers=8)
    assert settings.onnx_options().gpu_mem_limit == 1000 * 1024 * 1024 // 10
    assert Settings(store=tmp_path).onnx_options().gpu_mem_limit is None
    assert Settings(store=tmp_path).onnx_options().tf32 is False
    assert Settings(store=tmp_path).device_decode is False  # until gpu_check's nvJPEG step passes
