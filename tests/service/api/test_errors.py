"""Bad input gets a clear 4xx with ``{"error": {"code", "message"}}``, and the service keeps
serving: every case is followed by a good request that must succeed. Then the API key."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import ImageFile

from promptserve.service.classify.decoding import decode_image
from promptserve.service.errors import ImageTooLargeError, InvalidImageError
from tests.service.helpers import (
    ClientFactory,
    b64,
    bomb_png,
    engine_held,
    png_bytes,
    publish_copy,
    truncated_png,
)
from tests.waiting import eventually

pytestmark = pytest.mark.anyio

LIMITS = {
    "max_images_per_request": 3,
    "max_body_bytes": 200_000,
    "max_image_pixels": 1_000_000,
    "max_new_labels": 0,  # open vocabulary off: a label the classifier lacks is unknown
}


def files(*blobs: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (f"{i}.png", blob, "image/png")) for i, blob in enumerate(blobs)]


async def streamed(size: int) -> AsyncIterator[bytes]:
    for _ in range(size // 50_000 + 1):
        yield b"x" * 50_000


def png_json(**extra: Any) -> dict[str, Any]:
    return {"images": [b64(png_bytes())], **extra}


# (id, request kwargs, status, error code)
CASES: list[tuple[str, Callable[[], dict[str, Any]], int, str]] = [
    ("not-an-image", lambda: {"files": files(b"hello, world")}, 400, "invalid_image"),
    ("not-an-image-json", lambda: {"json": {"images": [b64(b"%PDF-1.4")]}}, 400, "invalid_image"),
    ("bad-base64", lambda: {"json": {"images": ["***not base64***"]}}, 400, "invalid_image"),
    ("empty-file", lambda: {"files": files(b"")}, 400, "invalid_image"),
    ("truncated", lambda: {"files": files(truncated_png())}, 400, "invalid_image"),
    ("bomb", lambda: {"files": files(bomb_png())}, 413, "image_too_large"),
    ("bomb-json", lambda: {"json": {"images": [b64(bomb_png())]}}, 413, "image_too_large"),
    ("body-too-large", lambda: {"files": files(b"\0" * 300_000)}, 413, "body_too_large"),
    (
        "body-too-large-streamed",
        lambda: {"content": streamed(300_000), "headers": {"Content-Type": "image/png"}},
        413,
        "body_too_large",
    ),
    ("too-many-images", lambda: {"files": files(*[png_bytes()] * 4)}, 413, "too_many_images"),
    (
        "too-many-images-json",
        lambda: {"json": {"images": [b64(png_bytes())] * 4}},
        413,
        "too_many_images",
    ),
    ("no-images-json", lambda: {"json": {"images": []}}, 422, "invalid_request"),
    ("no-images-key", lambda: {"json": {"top_k": 2}}, 422, "invalid_request"),
    ("no-images-multipart", lambda: {"data": {"top_k": "2"}, "files": []}, 422, "invalid_request"),
    (
        "unknown-classifier",
        lambda: {"json": png_json(classifier="nope")},
        404,
        "unknown_classifier",
    ),
    (
        "unknown-version",
        lambda: {"json": png_json(classifier="shapes", version="7")},
        404,
        "unknown_version",
    ),
    (
        "unknown-label",
        lambda: {"json": png_json(labels=["red circle", "cat"])},
        422,
        "unknown_label",
    ),
    (
        "unknown-label-hf",
        lambda: {
            "json": {"inputs": b64(png_bytes()), "parameters": {"candidate_labels": ["dog", "cat"]}}
        },
        422,
        "unknown_label",
    ),
    ("top-k-zero", lambda: {"json": png_json(top_k=0)}, 422, "invalid_request"),
    (
        "top-k-zero-multipart",
        lambda: {"files": files(png_bytes()), "data": {"top_k": "0"}},
        422,
        "invalid_request",
    ),
    (
        "top-k-zero-query",
        lambda: {"url": "/classify?top_k=0", "json": png_json()},
        422,
        "invalid_request",
    ),
    ("path-name", lambda: {"json": png_json(classifier="../outside")}, 422, "invalid_request"),
    ("path-name-abs", lambda: {"json": png_json(classifier="/etc")}, 422, "invalid_request"),
    (
        "path-name-query",
        lambda: {"url": "/classify?classifier=..%2Foutside", "json": png_json()},
        422,
        "invalid_request",
    ),
    (
        "malformed-json",
        lambda: {"content": b"{", "headers": {"Content-Type": "application/json"}},
        400,
        "invalid_body",
    ),
    (
        "wrong-media-type",
        lambda: {"content": b"hi", "headers": {"Content-Type": "text/plain"}},
        415,
        "unsupported_media_type",
    ),
    (
        "unknown-form-field",
        lambda: {"files": files(png_bytes()), "data": {"topk": "1"}},
        422,
        "invalid_request",
    ),
    (
        "gzip-body",
        lambda: {
            "content": gzip.compress(json.dumps(png_json()).encode()),
            "headers": {"Content-Type": "application/json", "Content-Encoding": "gzip"},
        },
        415,
        "unsupported_media_type",
    ),
    (
        "multipart-without-boundary",
        lambda: {"content": b"--x\r\n", "headers": {"Content-Type": "multipart/form-data"}},
        400,
        "bad_request",
    ),
    ("text-as-image", lambda: {"data": {"images": "not a file"}}, 422, "invalid_request"),
    ("unknown-route", lambda: {"url": "/nope"}, 404, "not_found"),
    ("wrong-method", lambda: {"method": "GET"}, 405, "method_not_allowed"),
]


@pytest.mark.parametrize(
    ("make", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_bad_request_is_refused_and_the_next_succeeds(
    client_factory: ClientFactory,
    store: Path,
    make: Callable[[], dict[str, Any]],
    status: int,
    code: str,
) -> None:
    # an artifact beside the store: a path-like name must never reach it
    publish_copy(store / "shapes" / "1", store.parent, "outside", "1")  # store/../outside/1
    request = {"method": "POST", "url": "/classify"} | make()
    async with client_factory(**LIMITS) as (client, _):
        response = await client.request(**request)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] == code
        assert isinstance(error["message"], str)
        assert error["message"]
        good = await client.post("/classify", json=png_json())
        assert good.status_code == 200, good.text


def test_bomb_is_refused_from_its_header(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: decoded.append(image))
    with pytest.raises(ImageTooLargeError, match="pixels"):
        decode_image(bomb_png(), max_pixels=25_000_000)
    assert decoded == []  # 400 M pixels were never decoded


def test_image_at_the_limit_is_accepted_and_one_over_is_not() -> None:
    assert decode_image(png_bytes(size=40), max_pixels=1600).size == (40, 40)
    with pytest.raises(ImageTooLargeError):
        decode_image(png_bytes(size=40), max_pixels=1599)
    with pytest.raises(InvalidImageError, match="truncated"):
        decode_image(truncated_png(), max_pixels=10_000)


async def test_api_key(client_factory: ClientFactory) -> None:
    good = {"Authorization": "Bearer s3cret-key"}
    async with client_factory(api_key="s3cret-key") as (client, _):
        for url in ("/classifiers", "/metrics", "/classifiers/shapes"):
            refused = await client.get(url)
            assert refused.status_code == 401, url
            assert refused.json()["error"]["code"] == "unauthorized"
            assert refused.headers["WWW-Authenticate"] == "Bearer"
            assert (await client.get(url, headers=good)).status_code == 200, url
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"}):
            response = await client.post("/classify", json=png_json(), headers=headers)
            assert response.status_code == 401, headers
        response = await client.post("/classify", json=png_json(), headers=good)
        assert response.status_code == 200
        for url in ("/health/live", "/health/ready"):
            assert (await client.get(url)).status_code == 200, url


async def test_no_api_key_means_open(client_factory: ClientFactory) -> None:
    async with client_factory() as (client, _):
        assert (await client.get("/classifiers")).status_code == 200
        response = await client.get("/classifiers", headers={"Authorization": "Bearer anything"})
        assert response.status_code == 200


async def test_full_queue_answers_429(client_factory: ClientFactory) -> None:
    async with client_factory(queue_size=2, max_images_per_request=2) as (client, runtime):
        with engine_held(runtime) as entered:  # keeps the engine busy until the block ends
            running = asyncio.create_task(client.post("/classify", json=png_json()))
            await eventually(entered.is_set)
            two = {"images": [b64(png_bytes())] * 2}
            waiting = asyncio.create_task(client.post("/classify", json=two))
            await eventually(lambda: runtime.local.batcher.queue_depth == 2)
            refused = await client.post("/classify", json=png_json())
        assert [(await t).status_code for t in (running, waiting)] == [200, 200]
        good = await client.post("/classify", json=png_json())
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "queue_full"
    assert refused.headers["Retry-After"] == "1"
    assert good.status_code == 200
