"""End to end: `promptserve serve` (service.cli) as a real uvicorn process on a free port, real
HTTP with httpx, and Hugging Face's own InferenceClient."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.helpers import (
    CLASS_NAMES,
    b64,
    bomb_png,
    jpeg_bytes,
    png_bytes,
    truncated_png,
)
from tests.service.servers import FIRST_START_LOG, Server, copy_store, start_server, stop_server

pytestmark = pytest.mark.slow  # real server processes


@pytest.fixture(scope="module")
def server(template_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("e2e")
    store = copy_store(template_store, root / "store")
    running = start_server(store, root / "server.log", timeout=180)
    yield running
    stop_server(running)


@pytest.mark.anyio
async def test_32_concurrent_requests_all_succeed(server: Server) -> None:
    images = [png_bytes((40 * i % 255, 90, 200)) for i in range(8)] + [jpeg_bytes()]
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as client:

        async def one(i: int) -> httpx.Response:
            image = images[i % len(images)]
            if i % 2:
                return await client.post("/classify", json={"images": [b64(image)], "top_k": 2})
            files = [("images", (f"{i}.png", image, "image/png"))]
            return await client.post("/classify", files=files, data={"classifier": "shapes"})

        responses = await asyncio.gather(*(one(i) for i in range(32)))
        metrics = (await client.get("/metrics")).text
    assert [r.status_code for r in responses] == [200] * 32, [r.text for r in responses]
    for response in responses:
        (row,) = response.json()["predictions"]
        assert {p["label"] for p in row} <= set(CLASS_NAMES)
    assert "promptserve_batch_size_count" in metrics


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"files": [("images", ("x.png", b"not an image", "image/png"))]}, 400, "invalid_image"),
        ({"files": [("images", ("x.png", truncated_png(), "image/png"))]}, 400, "invalid_image"),
        ({"files": [("images", ("x.png", bomb_png(), "image/png"))]}, 413, "image_too_large"),
        ({"files": [("images", ("x.png", b"\0" * 300_000, "image/png"))]}, 413, "body_too_large"),
        ({"json": {"images": [b64(png_bytes())] * 5}}, 413, "too_many_images"),
        ({"json": {"images": []}}, 422, "invalid_request"),
        ({"json": {"images": [b64(png_bytes())], "classifier": "nope"}}, 404, "unknown_classifier"),
        ({"json": {"images": [b64(png_bytes())], "version": "99"}}, 404, "unknown_version"),
        ({"json": {"images": [b64(png_bytes())], "labels": ["dog", "dog"]}}, 422, "invalid_label"),
        ({"json": {"images": [b64(png_bytes())], "top_k": 0}}, 422, "invalid_request"),
        ({"json": {"images": [b64(png_bytes())], "classifier": "../x"}}, 422, "invalid_request"),
    ],
    ids=[
        "not-image",
        "truncated",
        "bomb",
        "body-too-large",
        "too-many",
        "no-images",
        "unknown-classifier",
        "unknown-version",
        "duplicate-label",
        "top-k-0",
        "path-name",
    ],
)
def test_bad_requests_over_http(
    server: Server, kwargs: dict[str, object], status: int, code: str
) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.post("/classify", **kwargs)  # type: ignore[arg-type]
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
        good = client.post("/classify", json={"images": [b64(png_bytes())]})
        assert good.status_code == 200, good.text
    assert server.process.poll() is None


def test_hugging_face_inference_client(server: Server) -> None:
    import httpx2
    from huggingface_hub import InferenceClient, set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    def local_only(request: httpx2.Request) -> None:  # nothing may leave this machine
        assert request.url.host == "127.0.0.1", request.url

    # huggingface_hub's own client refuses every request under HF_HUB_OFFLINE (set for the
    # tests); this one only lets requests to the local server through
    set_client_factory(lambda: httpx2.Client(event_hooks={"request": [local_only]}, timeout=60))
    try:
        client = InferenceClient(model=f"{server.url}/classify?classifier=shapes")
        result = client.zero_shot_image_classification(
            png_bytes(), candidate_labels=["red circle", "blue square", "green star"]
        )
    finally:
        set_client_factory(default_client_factory)
    assert sorted(r.label for r in result) == ["blue square", "green star", "red circle"]
    assert abs(sum(r.score for r in result) - 1.0) < 1e-4
    assert [r.score for r in result] == sorted((r.score for r in result), reverse=True)


def test_default_classifier_is_right_on_easy_images(
    mini_template_store: Path, mini_store: Path, tmp_path: Path
) -> None:
    """The default a first start creates (the session's template store is made by one: a real
    server on an empty store) is right on easy images, served from a copy of that store."""
    from promptserve.training.synthetic.tasks import SyntheticSpec, color_shape_classes, render_item

    first_start = (mini_template_store.parent / FIRST_START_LOG).read_text()
    assert "has no 'default' classifier: creating it on mini" in first_start, first_start
    running = start_server(mini_store, tmp_path / "server.log", timeout=600)
    spec = SyntheticSpec(task="color-shape", style="filled", background="plain")
    classes = color_shape_classes()  # sorted: 8 colours x 8 shapes
    names = [classes[8 * i + (i + shift) % 8] for shift in (0, 4) for i in range(8)]
    try:
        with httpx.Client(base_url=running.url, timeout=60) as client:
            top1 = []
            for name in names:
                image = render_item(spec, "test", name, 0)
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                response = client.post("/classify", json={"images": [b64(buffer.getvalue())]})
                assert response.status_code == 200, response.text
                top1.append(response.json()["predictions"][0][0]["label"])
    finally:
        stop_server(running)
    correct = sum(label == name for label, name in zip(top1, names, strict=True))
    assert correct >= 0.75 * len(names), list(zip(names, top1, strict=True))
