"""Service fixtures: a store of tiny classifiers exported once per session, apps over copies of
it, and image bytes (good, broken, bombs).

The tiny backbone is random-init and 32 px; one export costs ~10-20 CPU seconds, so the session
exports one classifier and every other classifier or version is a copy of it with its manifest's
name and version rewritten (the manifest is not among the hashed files).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from promptserve.service.app import create_app
from promptserve.service.runtime import Runtime
from promptserve.service.settings import Settings

CLASS_NAMES = ["red circle", "blue square", "green star", "yellow heart", "purple ring"]
TINY_NAMES = ("default", "shapes")  # both in the template store, each with version 1


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from promptserve.models.artifact import publish_classifier
    from promptserve.models.backbone import load_backbone
    from promptserve.models.methods import create_method

    learner = create_method("zeroshot", load_backbone("tiny"))
    root = tmp_path_factory.mktemp("tiny-export")
    return publish_classifier(learner, CLASS_NAMES, root, "tiny", metrics={"top1": 42.0})


@pytest.fixture(scope="session")
def template_store(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("template-store")
    for name in TINY_NAMES:
        (store / name).mkdir()
        publish_copy(tiny_artifact, store, name, "1")
    return store


@pytest.fixture
def store(template_store: Path, tmp_path: Path) -> Path:
    """A private copy of the template store (tests may publish and delete)."""
    target = tmp_path / "store"
    shutil.copytree(template_store, target)
    return target


def make_settings(store: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "store": store,
        "create_default": False,
        "device": "cpu",
        "engine": "onnx",
        "api_key": None,
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


ClientFactory = Callable[..., Any]  # (**settings overrides) -> serve(...) context manager


@pytest.fixture
def client_factory(store: Path) -> ClientFactory:
    """``async with client_factory(**settings_overrides) as (client, runtime): ...``"""

    def factory(**overrides: Any) -> Any:
        return serve(make_settings(store, **overrides))

    return factory


# --- images ---------------------------------------------------------------------------------


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
