"""Service test helpers: stores of tiny classifiers, settings, an in-process app, and image
bytes (good, broken, bombs). The fixtures over them are in conftest.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import struct
import threading
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from torch import Tensor

from promptserve.service.app import create_app
from promptserve.service.runtime import Runtime
from promptserve.service.settings import Settings
from tests.waiting import eventually

CLASS_NAMES = ["red circle", "blue square", "green star", "yellow heart", "purple ring"]
TINY_NAMES = ("default", "shapes")  # both in the template store, each with version 1
T = TypeVar("T")


def publish_copy(source: Path, store: Path, name: str, version: str) -> Path:
    """Publish a copy of the artifact `source` as `<store>/<name>/<version>`, atomically,
    with the shared graphs of its own store (format 2) when `store` lacks them."""
    shared = source.parent.parent / ".backbones"
    if shared.is_dir() and shared != store / ".backbones":
        shutil.copytree(shared, store / ".backbones", dirs_exist_ok=True)
    staging = store / name / f".tmp-copy-{version}"
    shutil.copytree(source, staging)
    manifest_file = staging / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest.update(name=name, version=version)
    manifest_file.write_text(json.dumps(manifest, indent=2))
    target = store / name / version
    staging.rename(target)
    return target


def corrupt(artifact: Path) -> None:
    """Flip the last byte of the artifact's class embeddings: it fails its hash check."""
    with (artifact / "classes.safetensors").open("r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 0xFF]))


def make_settings(store: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "store": store,
        "create_default": False,
        "device": "cpu",
        "engine": "onnx",
        "api_key": None,
        "api_keys_file": None,
        "max_wait_ms": 2.0,
        "max_batch_size": 32,
        "decode_threads": 2,
        "onnx_threads": 1,
    }
    return Settings(**(values | overrides))


@asynccontextmanager
async def serve(
    settings: Settings, *, wait: bool = True
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    """The app over `settings` with its lifespan running, an in-process client, the runtime."""
    app = create_app(settings)
    runtime: Runtime = app.state.runtime
    async with app.router.lifespan_context(app):
        if wait:
            state = await runtime.local.wait_ready(timeout=120)
            assert state == "ready", runtime.local.failure
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, runtime


@contextmanager
def engine_held(runtime: Runtime, name: str = "default") -> Iterator[threading.Event]:
    """Hold the engine of classifier `name` (in this process) inside its first call until the
    block ends; yields the event set once a batch is inside it."""
    assert runtime.local is not None
    classifier = runtime.local.cache.get(name)
    entered, release = threading.Event(), threading.Event()
    embed = classifier.embed

    def held(pixels: Tensor) -> Tensor:
        entered.set()
        release.wait(timeout=60)
        return embed(pixels)

    classifier.embed = held  # type: ignore[method-assign]
    try:
        yield entered
    finally:
        release.set()


async def sent_together(
    runtime: Runtime, plug: Awaitable[Any], requests: list[Awaitable[T]], images: int
) -> tuple[list[T], int]:
    """Cross-request batching without a time window: `plug` (a request on the "default"
    classifier) holds the engine (`engine_held`), `requests` (bringing `images` images in all)
    are sent meanwhile, and the engine is released once every one of them is waiting in the
    queue. Returns their answers and the engine calls they took: 1 when they ran as one batch
    (at most `max_batch_size` images)."""
    assert runtime.local is not None
    batcher = runtime.local.batcher
    with engine_held(runtime) as entered:
        held = asyncio.ensure_future(plug)
        await eventually(entered.is_set, what="the engine held by the plug request")
        before = batcher.batches_run  # the plug's own call counts once it returns
        sent = [asyncio.ensure_future(request) for request in requests]
        await eventually(lambda: batcher.queue_depth == images, what=f"{images} images queued")
    await held
    answers = [await request for request in sent]
    return answers, batcher.batches_run - before - 1


ClientFactory = Callable[..., Any]  # (**settings overrides) -> serve(...) context manager


def b64(data: bytes) -> str:
    """Bytes as the base64 text of a JSON body."""
    return base64.b64encode(data).decode()


def png_bytes(colour: tuple[int, int, int] = (220, 30, 30), size: int = 40) -> bytes:
    image = Image.new("RGB", (size, size), (240, 240, 240))
    image.paste(colour, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(size: int = 48) -> bytes:
    image = Image.effect_noise((size, size), 40).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def truncated_png() -> bytes:
    image = Image.effect_noise((64, 64), 60).convert("RGB")  # noise: incompressible
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    return data[: len(data) // 2]


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A ~100-byte PNG whose header declares `width` x `height` RGB pixels."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)  # far too little data; never decoded anyway
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def series(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample named `name` in a Prometheus text, by its labels (sorted pairs)."""
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }
