"""POST /classify in every shape it accepts, and cross-request batching through the app."""

from __future__ import annotations

import math
from typing import Any

import pytest

from promptserve.models.input_engines import BoundInputs
from tests.numerics import RTOL_SCORES, assert_close
from tests.service.helpers import (
    CLASS_NAMES,
    ClientFactory,
    b64,
    jpeg_bytes,
    png_bytes,
    sent_together,
)

pytestmark = pytest.mark.anyio


def check_ranked(row: list[dict[str, Any]], labels: list[str], top_k: int) -> None:
    assert len(row) == min(top_k, len(labels))
    assert {p["label"] for p in row} <= set(labels)
    scores = [p["score"] for p in row]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)


async def test_multipart_files_and_fields(client_factory: ClientFactory) -> None:
    async with client_factory() as (client, _):
        files = [("images", ("a.png", png_bytes(), "image/png"))]
        files.append(("images", ("b.jpg", jpeg_bytes(), "image/jpeg")))
        data = {"classifier": "shapes", "version": "1", "top_k": "2"}
        response = await client.post("/classify", files=files, data=data)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["classifier"] == "shapes"
    assert body["version"] == "1"
    assert len(body["predictions"]) == 2
    for row in body["predictions"]:
        check_ranked(row, CLASS_NAMES, 2)


async def test_a_file_part_over_a_mebibyte_is_read_whole(client_factory: ClientFactory) -> None:
    # parts stay in memory (service.api.bodies): a photo-sized part, over the size where
    # Starlette would spool it to disk, scores as the same image sent as JSON does
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(3).integers(0, 256, (700, 700, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=0)
    photo = buffer.getvalue()
    assert len(photo) > 1_300_000
    async with client_factory(max_body_bytes=4_000_000) as (client, _):
        files = [("images", ("big.png", photo, "image/png"))] * 2
        as_form = await client.post("/classify", files=files, data={"top_k": "3"})
        as_json = await client.post("/classify", json={"images": [b64(photo)], "top_k": 3})
    assert as_form.status_code == 200, as_form.text
    assert as_json.status_code == 200, as_json.text
    first, second = as_form.json()["predictions"]
    assert first == second
    expected = as_json.json()["predictions"][0]
    assert [p["label"] for p in first] == [p["label"] for p in expected]
    assert_close([p["score"] for p in first], [p["score"] for p in expected], rtol=RTOL_SCORES)


async def test_json_base64_with_defaults(client_factory: ClientFactory) -> None:
    async with client_factory(default_top_k=3) as (client, _):
        response = await client.post("/classify", json={"images": [b64(png_bytes())]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["classifier"] == "default"
    assert body["version"] == "1"
    check_ranked(body["predictions"][0], CLASS_NAMES, 3)


async def test_full_label_set_probabilities_sum_to_one(client_factory: ClientFactory) -> None:
    async with client_factory() as (client, _):
        payload = {"images": [f"data:image/png;base64,{b64(png_bytes())}"], "top_k": 99}
        response = await client.post("/classify", json=payload)
    row = response.json()["predictions"][0]
    assert len(row) == len(CLASS_NAMES)
    assert math.isclose(sum(p["score"] for p in row), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize("form", ["repeated", "comma"])
async def test_label_subset_multipart(client_factory: ClientFactory, form: str) -> None:
    labels = ["blue square", "green star"]
    async with client_factory() as (client, _):
        files = [("images", ("a.png", png_bytes(), "image/png"))]
        data = {"labels": labels if form == "repeated" else ",".join(labels), "top_k": "5"}
        response = await client.post("/classify", files=files, data=data)
    assert response.status_code == 200, response.text
    row = response.json()["predictions"][0]
    assert {p["label"] for p in row} == set(labels)
    assert math.isclose(sum(p["score"] for p in row), 1.0, rel_tol=1e-5)


async def test_subset_scores_are_a_renormalised_softmax(client_factory: ClientFactory) -> None:
    image = [b64(jpeg_bytes())]
    async with client_factory() as (client, _):
        full = await client.post("/classify", json={"images": image, "top_k": 99})
        part = await client.post(
            "/classify", json={"images": image, "labels": CLASS_NAMES[:2], "top_k": 99}
        )
    everything = {p["label"]: p["score"] for p in full.json()["predictions"][0]}
    subset = {p["label"]: p["score"] for p in part.json()["predictions"][0]}
    total = everything[CLASS_NAMES[0]] + everything[CLASS_NAMES[1]]
    for label in CLASS_NAMES[:2]:
        assert math.isclose(subset[label], everything[label] / total, rel_tol=1e-4)


async def test_raw_image_body_with_query_parameters(client_factory: ClientFactory) -> None:
    async with client_factory() as (client, _):
        response = await client.post(
            "/classify?classifier=shapes&top_k=1",
            content=png_bytes(),
            headers={"Content-Type": "image/png"},
        )
    assert response.status_code == 200, response.text
    assert response.json()["classifier"] == "shapes"
    assert len(response.json()["predictions"][0]) == 1


async def test_hugging_face_zero_shot_shape(client_factory: ClientFactory) -> None:
    candidates = ["yellow heart", "red circle", "purple ring"]
    payload = {
        "inputs": b64(png_bytes()),
        "parameters": {"candidate_labels": candidates, "hypothesis_template": "a photo of {}."},
    }
    async with client_factory() as (client, _):
        response = await client.post("/classify?classifier=shapes", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, list)
    assert sorted(p["label"] for p in body) == sorted(candidates)
    assert [p["score"] for p in body] == sorted((p["score"] for p in body), reverse=True)
    assert math.isclose(sum(p["score"] for p in body), 1.0, rel_tol=1e-5)


async def test_concurrent_requests_share_one_engine_batch(client_factory: ClientFactory) -> None:
    """LitServe's batching test through the whole app: N requests, one engine call."""
    n = 4
    async with client_factory(max_batch_size=32) as (client, runtime):
        payload = {"images": [b64(png_bytes())], "classifier": "shapes"}
        responses, calls = await sent_together(
            runtime,
            client.post("/classify", json={"images": [b64(png_bytes())]}),  # the plug
            [client.post("/classify", json=payload) for _ in range(n)],
            images=n,
        )
    assert [r.status_code for r in responses] == [200] * n
    assert calls == 1
    assert runtime.local.batcher.images_run >= n


async def test_batched_results_equal_unbatched(client_factory: ClientFactory) -> None:
    images = [png_bytes((200, 40, 40)), png_bytes((40, 40, 200)), jpeg_bytes()]
    async with client_factory() as (client, runtime):
        alone = [
            (await client.post("/classify", json={"images": [b64(i)], "top_k": 99})).json()
            for i in images
        ]
        together, calls = await sent_together(
            runtime,
            client.post("/classify", json={"images": [b64(png_bytes())]}),  # the plug
            [client.post("/classify", json={"images": [b64(i)], "top_k": 99}) for i in images],
            images=len(images),
        )
        assert calls == 1  # they really ran together
    for single, batched in zip(alone, together, strict=True):
        a = {p["label"]: p["score"] for p in single["predictions"][0]}
        b = {p["label"]: p["score"] for p in batched.json()["predictions"][0]}
        assert a.keys() == b.keys()
        assert_close([b[k] for k in a], [a[k] for k in a], RTOL_SCORES)


@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
async def test_the_engine_setting_picks_the_engine_that_scores(
    client_factory: ClientFactory, kind: str
) -> None:
    async with client_factory(engine=kind) as (client, runtime):
        response = await client.post("/classify", json={"images": [b64(png_bytes())]})
        classifier = runtime.local.cache.get("default")
    assert response.status_code == 200, response.text
    engine = classifier.engine
    if isinstance(engine, BoundInputs):  # a prompt graph shared by the backbone's classifiers
        engine = engine.engine
    running = "torchscript" if "TorchScript" in type(engine).__name__ else "onnx"
    assert running == kind, type(engine)


async def test_openapi_documents_the_classify_bodies(client_factory: ClientFactory) -> None:
    async with client_factory() as (client, _):
        schema = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
    content = schema["paths"]["/classify"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json", "image/*"} <= set(content)
    assert docs.status_code == 200
