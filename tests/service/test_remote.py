"""The API worker / engine process split (service.remote) in one process: a `WorkerRuntime`
talking to an `EngineServer` over a real Unix socket answers exactly as the engine's own
`Runtime`, errors keep their HTTP status, and metrics are summed over the workers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from promptserve.models.errors import InvalidLabelError
from promptserve.service.classify.pipeline import ClassifyQuery
from promptserve.service.errors import NotReadyError, ServiceError, TooManyImagesError
from promptserve.service.remote.engine import EngineServer
from promptserve.service.remote.protocol import (
    error_header,
    pixels_from_bytes,
    pixels_to_bytes,
    raise_error,
)
from promptserve.service.remote.worker import WorkerRuntime, dump_settings, load_settings
from promptserve.service.runtime import Runtime
from tests.service.conftest import make_settings, png_bytes


def test_pixels_round_trip_and_size_checks() -> None:
    pixels = torch.randn(2, 3, 8, 8)
    shape, data = pixels_to_bytes(pixels)
    assert torch.equal(pixels_from_bytes(shape, data), pixels)
    with pytest.raises(ValueError, match="do not fill"):
        pixels_from_bytes([3, 3, 8, 8], data)
    with pytest.raises(ValueError, match="shape"):
        pixels_from_bytes([2, 3, 8], data)


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (TooManyImagesError("17 images"), 413, "too_many_images"),
        (InvalidLabelError("duplicate label 'dog'"), 422, "invalid_label"),
        (KeyError("/srv/secret/path"), 500, "internal_error"),
    ],
)
def test_errors_cross_the_socket_with_their_status(
    error: Exception, status: int, code: str
) -> None:
    header = error_header(error)
    with pytest.raises(ServiceError) as raised:
        raise_error(header)
    assert (raised.value.status, raised.value.code) == (status, code)
    assert "/srv/secret" not in raised.value.message  # internals stay in the engine's log


def test_worker_settings_keep_the_api_key(store: Path) -> None:
    settings = make_settings(store, api_key="s3cret", workers=3)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PROMPTSERVE_WORKER_SETTINGS", dump_settings(settings))
        loaded = load_settings()
    assert loaded.api_key is not None
    assert loaded.api_key.get_secret_value() == "s3cret"
    assert (loaded.workers, loaded.store) == (3, store)


@pytest.mark.anyio
async def test_worker_answers_like_the_engine(store: Path, tmp_path: Path) -> None:
    settings = make_settings(store)
    socket_path = tmp_path / "engine.sock"
    engine = Runtime(settings)
    await engine.start()
    assert await engine.wait_ready(timeout=120) == "ready"
    server = EngineServer(engine)
    unix = await asyncio.start_unix_server(server.handle, path=str(socket_path))
    worker = WorkerRuntime(settings.model_copy(update={"engine_socket": socket_path}))
    await worker.start()
    try:
        query = ClassifyQuery(images=[png_bytes(), png_bytes((20, 200, 40))], top_k=3)
        assert await worker.classify(query) == await engine.classify(query)
        named = ClassifyQuery(images=[png_bytes()], classifier="shapes", labels=["dog", "cat"])
        remote = await worker.classify(named)
        assert remote.encoded_labels == ["dog", "cat"]  # encoded by the engine process
        with pytest.raises(ServiceError) as raised:
            await worker.classify(ClassifyQuery(images=[png_bytes()], labels=["dog", "dog"]))
        assert (raised.value.status, raised.value.code) == (422, "invalid_label")

        worker.metrics.observe_request("/classify", "POST", 200, 0.01)
        engine.metrics.observe_request("/classify", "POST", 200, 0.01)  # "another worker"
        text = await worker.expose_metrics()
        assert (
            'promptserve_http_requests_total{route="/classify",method="POST",status="200"} 2'
            in text
        )
        assert "promptserve_images_total 5" in text  # 2 + 2 + 1 images ran in the engine
        assert 'promptserve_api_worker_requests_total{worker="' in text
        await worker.refresh()
        assert ("shapes", "1") in worker.store.loaded()  # loaded in the engine, not here

        several = ClassifyQuery(images=[png_bytes(), png_bytes((20, 200, 40))], top_k=2)
        names = ["shapes", "default"]
        assert await worker.classify_many(several, names) == await engine.classify_many(
            several, names
        )
        with pytest.raises(ServiceError) as raised:
            await worker.classify_many(several, ["shapes", "shapes"])
        assert (raised.value.status, raised.value.code) == (422, "invalid_request")
    finally:
        await worker.stop()
        unix.close()
        await engine.stop()


@pytest.mark.anyio
async def test_without_the_engine_requests_are_503(store: Path, tmp_path: Path) -> None:
    settings = make_settings(store, engine_socket=tmp_path / "absent.sock")
    worker = WorkerRuntime(settings)
    try:
        with pytest.raises(NotReadyError):
            await worker.classify(ClassifyQuery(images=[png_bytes()], classifier="shapes"))
        await worker.refresh()
        with pytest.raises(NotReadyError):
            worker.check_ready()
    finally:
        await worker.stop()
