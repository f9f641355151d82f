"""The API worker / engine process split (service.remote) in one process: a worker `Runtime`
talking to an `EngineServer` over a real Unix socket answers exactly as the engine's own
`Runtime`, errors keep their HTTP status and body, pixels cross as uint8, metrics are summed
over the workers, and an API worker holds no engine."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from promptserve.models.classifier import LabelRequest
from promptserve.models.engine_pool import EnginePool
from promptserve.models.errors import ArtifactError, InvalidLabelError
from promptserve.service.classify.cache import ClassifierCache
from promptserve.service.classify.pipeline import ClassifyQuery
from promptserve.service.classify.scoring import ScoreRequest, ScoreTarget
from promptserve.service.errors import NotReadyError, ServiceError, TooManyImagesError
from promptserve.service.public_errors import public_error
from promptserve.service.remote.engine import EngineServer
from promptserve.service.remote.protocol import (
    decode_score,
    encode_error,
    encode_score,
    pixels_from_bytes,
    pixels_to_bytes,
    raise_error,
)
from promptserve.service.remote.worker import RemoteEngine, dump_settings, load_settings
from promptserve.service.runtime import Runtime
from promptserve.service.settings import Settings
from tests.service.helpers import (
    b64,
    corrupt,
    make_settings,
    png_bytes,
    publish_copy,
    series,
    serve,
)

IMAGE = {"images": [b64(png_bytes())]}


def test_pixels_round_trip_and_size_checks() -> None:
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    shape, data = pixels_to_bytes(pixels)
    assert torch.equal(pixels_from_bytes(shape, data), pixels)
    with pytest.raises(ValueError, match="do not fill"):
        pixels_from_bytes([3, 3, 8, 8], data)
    with pytest.raises(ValueError, match="shape"):
        pixels_from_bytes([2, 3, 8], data)


def test_a_score_call_carries_uint8_pixels() -> None:
    labels = LabelRequest(["dog", "red circle"], ["dog"])
    request = ScoreRequest([ScoreTarget("shapes", "1", labels), ScoreTarget("default", "1")], 3)
    pixels = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    header, payload = encode_score(request, pixels)
    assert len(payload) == 2 * 3 * 224 * 224  # 150,528 bytes per 224 px image (float32: 602,112)
    decoded, received = decode_score(header, payload)
    assert decoded == request
    assert torch.equal(received, pixels)


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (TooManyImagesError("17 images"), 413, "too_many_images"),
        (InvalidLabelError("duplicate label 'dog'"), 422, "invalid_label"),
        (ArtifactError("/srv/secret/path: hash mismatch"), 500, "artifact_error"),
        (KeyError("/srv/secret/path"), 500, "internal_error"),
    ],
)
def test_errors_cross_the_socket_with_their_status(
    error: Exception, status: int, code: str
) -> None:
    with pytest.raises(ServiceError) as raised:
        raise_error(encode_error(error))
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


@asynccontextmanager
async def engine_process(settings: Settings, socket_path: Path) -> AsyncIterator[Runtime]:
    """The engine process's runtime and socket server, in this process."""
    engine = Runtime(settings)
    await engine.start()
    assert engine.local is not None
    assert await engine.local.wait_ready(timeout=120) == "ready"
    unix = await asyncio.start_unix_server(EngineServer(engine).handle, path=str(socket_path))
    try:
        yield engine
    finally:
        unix.close()
        await engine.stop()


@pytest.mark.anyio
async def test_worker_answers_like_the_engine(store: Path, tmp_path: Path) -> None:
    settings = make_settings(store)
    socket_path = tmp_path / "engine.sock"
    async with engine_process(settings, socket_path) as engine:
        worker = Runtime(settings.model_copy(update={"engine_socket": socket_path}))
        await worker.start()
        try:
            await _answers_like_the_engine(worker, engine)
        finally:
            await worker.stop()


async def _answers_like_the_engine(worker: Runtime, engine: Runtime) -> None:
    query = ClassifyQuery(images=[png_bytes(), png_bytes((20, 200, 40))], top_k=3)
    assert await worker.classify(query) == await engine.classify(query)
    named = ClassifyQuery(images=[png_bytes()], classifier="shapes", labels=["dog", "cat"])
    (remote,) = await worker.classify(named)
    assert remote.encoded_labels == ["dog", "cat"]  # encoded by the engine process
    with pytest.raises(InvalidLabelError) as refused:  # checked in the worker, before decoding
        await worker.classify(ClassifyQuery(images=[png_bytes()], labels=["dog", "dog"]))
    assert public_error(refused.value)[:2] == (422, "invalid_label")

    worker.metrics.observe_request("/classify", "POST", 200, 0.01)
    engine.metrics.observe_request("/classify", "POST", 200, 0.01)  # "another worker"
    text = await worker.engine.expose_metrics()
    requests = series(text, "promptserve_http_requests_total")
    assert requests == {(("method", "POST"), ("route", "/classify"), ("status", "200")): 2}
    assert series(text, "promptserve_images_total") == {(): 5}  # 2 + 2 + 1 images ran there
    assert 'promptserve_api_worker_requests_total{worker="' in text
    assert isinstance(worker.engine, RemoteEngine)
    await worker.engine.refresh()
    assert ("shapes", "1") in worker.engine.loaded()  # loaded in the engine, not here

    names = ["shapes", "default"]
    several = ClassifyQuery(
        images=[png_bytes(), png_bytes((20, 200, 40))], top_k=2, classifiers=names
    )
    assert await worker.classify(several) == await engine.classify(several)
    twice = ClassifyQuery(images=[png_bytes()], classifiers=["shapes", "shapes"])
    with pytest.raises(ServiceError) as raised:
        await worker.classify(twice)
    assert (raised.value.status, raised.value.code) == (422, "invalid_request")


@pytest.mark.anyio
async def test_without_the_engine_requests_are_503(store: Path, tmp_path: Path) -> None:
    settings = make_settings(store, engine_socket=tmp_path / "absent.sock")
    worker = Runtime(settings)
    try:
        with pytest.raises(NotReadyError):
            await worker.classify(ClassifyQuery(images=[png_bytes()], classifier="shapes"))
        with pytest.raises(NotReadyError):
            await worker.engine.ready()
    finally:
        await worker.stop()


def _reachable(root: object, depth: int = 6) -> list[object]:
    """The objects reachable from `root` through promptserve objects' attributes."""
    seen: dict[int, object] = {}
    frontier = [root]
    for _ in range(depth):
        found = []
        for item in frontier:
            values: Any = vars(item).values() if hasattr(item, "__dict__") else ()
            if isinstance(item, dict):
                values = item.values()
            elif isinstance(item, list | tuple | set):
                values = item
            for value in values:
                if id(value) not in seen:
                    seen[id(value)] = value
                    module = type(value).__module__
                    if module.startswith("promptserve") or isinstance(value, list | dict):
                        found.append(value)
        frontier = found
    return list(seen.values())


def test_an_api_worker_holds_no_engine(store: Path, tmp_path: Path) -> None:
    worker = Runtime(make_settings(store, engine_socket=tmp_path / "engine.sock"))
    held = _reachable(worker)
    assert worker.local is None
    assert isinstance(worker.engine, RemoteEngine)
    assert not [o for o in held if isinstance(o, EnginePool | ClassifierCache)]
    assert not [o for o in held if type(o).__name__ == "OnnxOptions"]
    one_process = Runtime(make_settings(store))  # the walk does find them where they are
    assert [o for o in _reachable(one_process) if isinstance(o, EnginePool)]


@asynccontextmanager
async def serve_two_workers_mode(
    settings: Settings, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    """An API worker's app in front of an engine process, both in this process."""
    socket_path = tmp_path / "engine.sock"
    async with engine_process(settings, socket_path):
        worker_settings = settings.model_copy(update={"engine_socket": socket_path})
        async with serve(worker_settings, wait=False) as (client, runtime):
            await runtime.engine.ready()
            yield client


ERROR_REQUESTS = [
    IMAGE | {"classifier": "broken"},  # an artifact that fails its checks: 500 artifact_error
    IMAGE | {"classifier": "nope"},  # 404 unknown_classifier
    IMAGE | {"classifier": "shapes", "version": "9"},  # 404 unknown_version
    IMAGE | {"labels": ["dog", "dog"]},  # 422 invalid_label
    IMAGE | {"classifiers": ["shapes", "shapes"]},  # 422 invalid_request
    {"images": [b64(b"not an image")]},  # 400 invalid_image
]


@pytest.mark.anyio
async def test_errors_read_the_same_in_both_process_modes(store: Path, tmp_path: Path) -> None:
    corrupt(publish_copy(store / "shapes" / "1", store, "broken", "1"))
    settings = make_settings(store)
    async with serve(settings) as (client, _):
        one_process = [
            await client.post("/classify", json=body, headers={"X-Request-ID": f"req-{i}"})
            for i, body in enumerate(ERROR_REQUESTS)
        ]
    async with serve_two_workers_mode(settings, tmp_path) as client:
        workers = [
            await client.post("/classify", json=body, headers={"X-Request-ID": f"req-{i}"})
            for i, body in enumerate(ERROR_REQUESTS)
        ]
    assert [r.status_code for r in one_process] == [500, 404, 404, 422, 422, 400]
    assert [r.json()["error"]["code"] for r in one_process][0] == "artifact_error"
    for alone, behind in zip(one_process, workers, strict=True):
        assert (behind.status_code, behind.json()) == (alone.status_code, alone.json())
    assert str(store) not in workers[0].text


@pytest.mark.anyio
async def test_ready_is_503_when_the_default_is_deleted_behind_the_service(
    store: Path, tmp_path: Path
) -> None:
    settings = make_settings(store)
    async with serve(settings) as (client, _):
        before = await client.get("/health/ready")
        shutil.rmtree(store / "default")  # by hand, not through the API
        alone = await client.get("/health/ready", headers={"X-Request-ID": "ready"})
    assert before.status_code == 200
    assert alone.status_code == 503
    assert alone.json()["error"]["code"] == "not_ready"
    publish_copy(store / "shapes" / "1", store, "default", "1")  # back, for the second mode
    async with serve_two_workers_mode(settings, tmp_path) as client:
        shutil.rmtree(store / "default")
        behind = await client.get("/health/ready", headers={"X-Request-ID": "ready"})
    assert (behind.status_code, behind.json()) == (alone.status_code, alone.json())


@pytest.mark.anyio
async def test_embeddings_read_the_same_in_both_process_modes(store: Path, tmp_path: Path) -> None:
    settings = make_settings(store)
    image = {"classifier": "shapes", "input": [b64(png_bytes())]}
    text = {"classifier": "shapes", "input": ["red circle", "teal kite"], "modality": "text"}
    async with serve(settings) as (client, _):
        alone = [(await client.post("/v1/embeddings", json=b)).json() for b in (image, text)]
    async with serve_two_workers_mode(settings, tmp_path) as client:
        behind = [(await client.post("/v1/embeddings", json=b)).json() for b in (image, text)]
    for one, other in zip(alone, behind, strict=True):
        assert one["model"] == other["model"] == "shapes@1"
        for a, b in zip(one["data"], other["data"], strict=True):
            assert torch.allclose(
                torch.tensor(a["embedding"]), torch.tensor(b["embedding"]), atol=1e-5
            )
