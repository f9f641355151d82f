"""/classifiers, the store behind it (new versions without restart, delete), health, metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from promptserve.service.catalog import Catalog
from promptserve.service.classify.cache import ClassifierCache
from tests.service.helpers import (
    CLASS_NAMES,
    ClientFactory,
    b64,
    corrupt,
    make_settings,
    png_bytes,
    publish_copy,
    series,
    serve,
)

pytestmark = pytest.mark.anyio

IMAGE = {"images": [b64(png_bytes())]}


async def test_list_and_describe(client_factory: ClientFactory) -> None:
    async with client_factory() as (client, _):
        listing = (await client.get("/classifiers")).json()
        described = await client.get("/classifiers/shapes")
        one = await client.get("/classifiers/shapes/1")
        missing = await client.get("/classifiers/nope")
        missing_version = await client.get("/classifiers/shapes/9")
    assert listing["default"] == "default"
    assert [c["name"] for c in listing["classifiers"]] == ["default", "shapes"]
    assert listing["classifiers"][0]["default"] is True
    assert listing["classifiers"][1] == {
        "name": "shapes",
        "versions": ["1"],
        "latest": "1",
        "default": False,
        "aliases": {"latest": "1"},
    }
    body = described.json()
    assert body["latest"] == "1"
    version = body["versions"][0]
    assert version["method"] == "zeroshot"
    assert version["class_names"] == CLASS_NAMES
    assert version["num_classes"] == len(CLASS_NAMES)
    assert version["metrics"] == {"top1": 42.0}
    assert version["backbone"]["architecture"] == "tiny"
    assert "onnx" in version["parity"]
    assert one.json() == version
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "unknown_classifier"
    assert missing_version.status_code == 404
    assert missing_version.json()["error"]["code"] == "unknown_version"


# ".." percent-encoded: a client would otherwise resolve "/classifiers/.." to "/" itself
@pytest.mark.parametrize(
    "path", ["/classifiers/%2E%2E", "/classifiers/.hidden", "/classifiers/a%20b"]
)
async def test_path_like_names_are_refused(client_factory: ClientFactory, path: str) -> None:
    async with client_factory() as (client, _):
        response = await client.get(path)
    assert response.status_code in (404, 422)
    assert "error" in response.json()


async def test_new_version_is_served_without_restart(
    client_factory: ClientFactory, store: Path
) -> None:
    async with client_factory() as (client, _):
        first = await client.post("/classify", json=IMAGE | {"classifier": "shapes"})
        publish_copy(store / "shapes" / "1", store, "shapes", "2")  # as a training job would
        second = await client.post("/classify", json=IMAGE | {"classifier": "shapes"})
        pinned = await client.post("/classify", json=IMAGE | {"classifier": "shapes", "version": 1})
        publish_copy(store / "shapes" / "1", store, "brand-new", "1")
        fresh = await client.post("/classify", json=IMAGE | {"classifier": "brand-new"})
        listing = (await client.get("/classifiers")).json()
    assert first.json()["version"] == "1"
    assert second.json()["version"] == "2"
    assert pinned.json()["version"] == "1"
    assert fresh.status_code == 200
    assert "brand-new" in [c["name"] for c in listing["classifiers"]]


async def test_delete_versions(client_factory: ClientFactory, store: Path) -> None:
    publish_copy(store / "shapes" / "1", store, "shapes", "2")
    async with client_factory() as (client, _):
        assert (await client.post("/classify", json=IMAGE | {"classifier": "shapes"})).is_success
        deleted = await client.delete("/classifiers/shapes/2")
        after = await client.post("/classify", json=IMAGE | {"classifier": "shapes"})
        again = await client.delete("/classifiers/shapes/2")
        last = await client.delete("/classifiers/shapes/1")
        gone = await client.post("/classify", json=IMAGE | {"classifier": "shapes"})
        refused = await client.delete("/classifiers/default/1")
        still = await client.post("/classify", json=IMAGE)
    assert deleted.status_code == 204
    assert after.json()["version"] == "1"
    assert again.status_code == 404
    assert last.status_code == 204
    assert not (store / "shapes").exists()
    assert gone.status_code == 404
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "conflict"
    assert still.status_code == 200


async def test_altered_artifact_is_refused_and_others_still_served(
    client_factory: ClientFactory, store: Path
) -> None:
    corrupt(publish_copy(store / "shapes" / "1", store, "broken", "1"))
    async with client_factory() as (client, _):
        refused = await client.post("/classify", json=IMAGE | {"classifier": "broken"})
        fine = await client.post("/classify", json=IMAGE | {"classifier": "shapes"})
    assert refused.status_code == 500
    assert refused.json()["error"]["code"] == "artifact_error"
    assert str(store) not in refused.text  # no server paths in the answer
    assert fine.status_code == 200


def test_store_reloads_a_republished_version_number(store: Path) -> None:
    catalog = Catalog(store)
    classifiers = ClassifierCache(catalog, max_loaded=2)
    first = classifiers.get("shapes")
    assert classifiers.get("shapes", "1") is first  # cached
    publish_copy(store / "shapes" / "1", store, "shapes", "2")
    catalog.delete("shapes", "2")
    publish_copy(store / "shapes" / "1", store, "shapes", "2")  # the number comes back
    second = classifiers.get("shapes")
    assert second is not classifiers.get("shapes", "1")
    catalog.delete("shapes", "2")
    publish_copy(store / "shapes" / "1", store, "shapes", "2")
    assert classifiers.get("shapes") is not second  # same key, new files: reloaded
    classifiers.get("default")
    assert len(classifiers.loaded()) == 2  # LRU bound


async def test_health_and_metrics(client_factory: ClientFactory) -> None:
    async with client_factory() as (client, _):
        live = await client.get("/health/live")
        ready = await client.get("/health/ready")
        await client.post("/classify", json=IMAGE)
        await client.post("/classify", json=IMAGE | {"top_k": 0})
        await client.get("/classifiers/nope")
        metrics = await client.get("/metrics")
    assert live.json() == {"status": "live"}
    assert ready.json() == {
        "status": "ready",
        "default_classifier": "default",
        "version": "1",
        "jobs": {"status": "available", "message": None},
    }
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = metrics.text
    requests = series(text, "promptserve_http_requests_total")
    assert requests[(("method", "POST"), ("route", "/classify"), ("status", "200"))] == 1
    assert requests[(("method", "POST"), ("route", "/classify"), ("status", "422"))] == 1
    assert requests[(("method", "GET"), ("route", "/classifiers/{name}"), ("status", "404"))] == 1
    latency = series(text, "promptserve_http_request_duration_seconds_bucket")
    assert latency[(("le", "+Inf"), ("route", "/classify"))] == 2
    assert series(text, "promptserve_batch_size_bucket")[(("le", "1.0"),)] == 1
    assert series(text, "promptserve_batch_size_count") == {(): 1}
    assert series(text, "promptserve_images_total") == {(): 1}
    assert series(text, "promptserve_queue_depth") == {(): 0}
    assert series(text, "promptserve_ready") == {(): 1}


async def test_not_ready_until_the_default_exists(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("promptserve.service.classify.engine.RETRY_S", 0.0)
    settings = make_settings(store, default_classifier="absent")
    async with serve(settings, wait=False) as (client, runtime):
        assert await runtime.local.wait_ready(timeout=30) == "failed"
        ready = await client.get("/health/ready")
        live = await client.get("/health/live")
        by_default = await client.post("/classify", json=IMAGE)
        named = await client.post("/classify", json=IMAGE | {"classifier": "shapes"})
        publish_copy(store / "shapes" / "1", store, "absent", "1")  # published later
        for _ in range(100):
            later = await client.get("/health/ready")
            if later.status_code == 200:
                break
            await asyncio.sleep(0.1)
        served = await client.post("/classify", json=IMAGE)
    assert later.status_code == 200, later.text
    assert served.json()["classifier"] == "absent"
    assert ready.status_code == 503
    assert ready.json()["error"]["code"] == "not_ready"
    assert "absent" in ready.json()["error"]["message"]
    assert live.status_code == 200
    assert by_default.status_code == 503
    assert named.status_code == 200
