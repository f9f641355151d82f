"""Many classifiers on one backbone: mixed batches, several classifiers per request, deletion
and hot publish on shared engines, and a store holding format-1 and format-2 artifacts.

Requests that must meet in one batch are sent while the engine is held (`gathered`), never
within a time window: they all wait in the queue when it is released."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from promptserve.models.artifact import publish_classifier, read_manifest
from promptserve.models.backbone import Backbone
from promptserve.models.methods import create_method
from promptserve.service.runtime import Runtime
from tests import helpers
from tests.numerics import RTOL_SCORES, assert_close
from tests.service.helpers import (
    CLASS_NAMES,
    b64,
    jpeg_bytes,
    make_settings,
    png_bytes,
    sent_together,
    series,
    serve,
)

pytestmark = pytest.mark.anyio

TENANTS = [f"coop-{i}" for i in range(4)]
PROVP = ["provp-0", "provp-1"]  # on one shared prompt graph
COLOURS = [(220, 30, 30), (30, 30, 220), (30, 200, 30), (230, 220, 40), (150, 40, 160)]


def publish_coop(
    store: Path, backbone: Backbone, name: str, seed: int, fmt: int = 2, method: str = "coop"
) -> Path:
    learner = create_method(method, backbone)
    helpers.perturb(learner, seed=seed, scale=0.5)
    names = CLASS_NAMES[: 3 + seed % 3]  # label sets differ between tenants
    return publish_classifier(learner, names, store, name, format_version=fmt)


@pytest.fixture(scope="module")
def tenant_store(
    template_store: Path, tiny_backbone: Backbone, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The template store plus four coop tenants (format 2) and one format-1 coop ("old")."""
    root = Path(shutil.copytree(template_store, tmp_path_factory.mktemp("tenants") / "store"))
    for seed, name in enumerate(TENANTS):
        publish_coop(root, tiny_backbone, name, seed)
    publish_coop(root, tiny_backbone, "old", 7, fmt=1)
    for seed, name in enumerate(PROVP):
        publish_coop(root, tiny_backbone, name, 20 + seed, method="provp")
    return root


@pytest.fixture
def tenants(tenant_store: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tenant_store, tmp_path / "store"))


def image(i: int) -> str:
    return b64(png_bytes(COLOURS[i % len(COLOURS)], size=36 + i))


async def classify(client: Any, name: str, images: list[str]) -> dict[str, Any]:
    response = await client.post(
        "/classify", json={"images": images, "classifier": name, "top_k": 9}
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def gathered(
    client: Any, runtime: Runtime, requests: list[tuple[str, list[str]]]
) -> tuple[list[dict[str, Any]], int]:
    """`requests` ((classifier, images) pairs) sent together (`sent_together`): their answers
    and the engine calls they took."""
    sent = [classify(client, name, images) for name, images in requests]
    plug = classify(client, "default", [image(0)])
    return await sent_together(runtime, plug, sent, sum(len(i) for _, i in requests))


def scores(body: dict[str, Any]) -> list[dict[str, float]]:
    return [{p["label"]: p["score"] for p in row} for row in body["predictions"]]


def assert_same_scores(a: dict[str, Any], b: dict[str, Any]) -> None:
    for row_a, row_b in zip(scores(a), scores(b), strict=True):
        assert row_a.keys() == row_b.keys()
        assert_close([row_b[k] for k in row_a], list(row_a.values()), RTOL_SCORES)


async def test_mixed_batch_scores_equal_one_classifier_batches(tenants: Path) -> None:
    requests = [(name, [image(i), image(i + 1)]) for i, name in enumerate(TENANTS)]
    async with serve(make_settings(tenants, max_wait_ms=5.0)) as (client, runtime):
        alone = [await classify(client, name, images) for name, images in requests]
        assert runtime.local.batcher.batches_run == len(requests)  # one call each
        mixed, calls = await gathered(client, runtime, requests)
        assert calls == 1  # four classifiers, one engine call
        assert runtime.local.cache.engine_count() == 1
    for single, together in zip(alone, mixed, strict=True):
        assert together["classifier"] == single["classifier"]
        assert_same_scores(single, together)
        # each image was scored against its own classifier's classes
        labels = set(read_manifest(tenants / single["classifier"] / "1")["class_names"])
        assert {p["label"] for row in together["predictions"] for p in row} <= labels


@pytest.mark.parametrize("neighbours", [1, 6])
async def test_scores_never_depend_on_batch_neighbours(tenants: Path, neighbours: int) -> None:
    async with serve(make_settings(tenants)) as (client, runtime):
        alone = await classify(client, "coop-0", [image(0)])
        others = [(TENANTS[1 + i % 3], [b64(jpeg_bytes(30 + 3 * i))]) for i in range(neighbours)]
        requests = [("coop-0", [image(0)]), *others]
        (batched, *_), calls = await gathered(client, runtime, requests)
        assert calls == 1
    assert_same_scores(alone, batched)


async def test_one_request_several_classifiers(tenants: Path) -> None:
    images = [image(2), image(3)]
    names = ["coop-2", "coop-0", "old", "default"]
    async with serve(make_settings(tenants)) as (client, runtime):
        single = {name: await classify(client, name, images) for name in names}
        before = runtime.local.batcher.batches_run
        payload = {"images": images, "classifiers": names, "top_k": 9}
        response = await client.post("/classify", json=payload)
        assert response.status_code == 200, response.text
        # the shared graph once for coop-2, coop-0 and default; "old" is self-contained
        assert runtime.local.batcher.batches_run == before + 2
        query = await client.post(
            "/classify?classifiers=coop-1,coop-3&top_k=2", json={"images": images}
        )
        assert query.status_code == 200, query.text
        files = [("images", ("a.png", png_bytes(), "image/png"))]
        form = await client.post("/classify", files=files, data={"classifiers": "coop-1,old"})
        assert form.status_code == 200, form.text
    results = response.json()["results"]
    assert [r["classifier"] for r in results] == names
    for result in results:
        assert result["version"] == "1"
        assert_same_scores(single[result["classifier"]], result)
    assert [r["classifier"] for r in query.json()["results"]] == ["coop-1", "coop-3"]
    assert all(len(row) == 2 for r in query.json()["results"] for row in r["predictions"])
    assert [r["classifier"] for r in form.json()["results"]] == ["coop-1", "old"]


@pytest.mark.parametrize(
    ("payload", "status", "match"),
    [
        ({"classifiers": ["coop-0", "coop-0"]}, 422, "distinct"),
        ({"classifiers": ["coop-0", "nope"]}, 404, "nope"),
        ({"classifiers": ["coop-0", "coop-1"], "version": "1"}, 422, "version"),
        ({"classifiers": [f"c{i}" for i in range(17)]}, 422, "at most"),
        ({"classifiers": ["../default"]}, 422, "invalid classifier name"),
    ],
)
async def test_several_classifier_requests_are_checked(
    tenants: Path, payload: dict[str, Any], status: int, match: str
) -> None:
    async with serve(make_settings(tenants)) as (client, _):
        response = await client.post("/classify", json={"images": [image(0)]} | payload)
    assert response.status_code == status, response.text
    assert match in response.json()["error"]["message"]


async def test_delete_and_hot_publish_on_a_shared_engine(
    tenants: Path, tiny_backbone: Backbone
) -> None:
    async with serve(make_settings(tenants)) as (client, runtime):
        first = await classify(client, "coop-1", [image(1)])
        await classify(client, "coop-0", [image(1)])
        engine = runtime.local.cache.get("coop-1").engine
        assert (await client.delete("/classifiers/coop-0/1")).status_code == 204
        gone = await client.post("/classify", json={"images": [image(1)], "classifier": "coop-0"})
        assert gone.status_code == 404
        assert_same_scores(first, await classify(client, "coop-1", [image(1)]))
        # a training job publishes coop-1 version 2 while the service runs
        publish_coop(tenants, tiny_backbone, "coop-1", seed=11)
        second = await classify(client, "coop-1", [image(1)])
        assert second["version"] == "2"
        assert scores(second) != scores(first)
        assert runtime.local.cache.get("coop-1").engine is engine  # same shared engine, no reload
        assert runtime.local.cache.engines.opened == 1
        metrics = (await client.get("/metrics")).text
    assert series(metrics, "promptserve_engines") == {(): 1}
    loaded = runtime.local.cache.loaded_bytes()
    assert loaded > 0
    assert series(metrics, "promptserve_loaded_classifier_bytes") == {(): loaded}


async def test_store_with_both_formats(tenants: Path) -> None:
    assert read_manifest(tenants / "old" / "1")["format_version"] == 1
    assert read_manifest(tenants / "coop-0" / "1")["format_version"] == 2
    async with serve(make_settings(tenants)) as (client, runtime):
        old = await classify(client, "old", [image(0)])
        new = await classify(client, "coop-0", [image(0)])
        listed = (await client.get("/classifiers")).json()
        assert runtime.local.cache.engine_count() == 2  # the shared graph, and old's own
    assert old["version"] == new["version"] == "1"
    names = {c["name"] for c in listed["classifiers"]}
    assert {"old", "coop-0", "default"} <= names
    assert not any(name.startswith(".") for name in names)


async def test_max_loaded_bounds_classifiers_not_engines(tenants: Path) -> None:
    async with serve(make_settings(tenants, max_loaded_classifiers=2)) as (client, runtime):
        for name in TENANTS:
            await classify(client, name, [image(0)])
        assert len(runtime.local.cache.loaded()) == 2
        assert runtime.local.cache.engine_count() == 1
        assert runtime.local.cache.engines.opened == 1  # evictions never closed the shared engine


async def test_provp_classifiers_batch_together_per_sample(tenants: Path) -> None:
    requests = [(name, [image(i), image(i + 2)]) for i, name in enumerate([*PROVP, *PROVP])]
    async with serve(make_settings(tenants, max_wait_ms=5.0)) as (client, runtime):
        alone = [await classify(client, name, images) for name, images in requests]
        mixed, calls = await gathered(client, runtime, requests)
        assert calls == 1  # two provp classifiers, one call
        assert runtime.local.cache.engine_count() == 2  # the provp graph, and default's plain one
        several = await client.post(
            "/classify", json={"images": [image(0)], "classifiers": ["provp-1", "coop-0"]}
        )
        assert runtime.local.cache.engine_count() == 2  # coop-0 joined default on the plain one
    for single, together in zip(alone, mixed, strict=True):
        assert_same_scores(single, together)
    assert several.status_code == 200, several.text
    assert [r["classifier"] for r in several.json()["results"]] == ["provp-1", "coop-0"]
