"""POST /adapt and /jobs in process: request shapes, every refusal, idempotency, paging, cancel.

Jobs here never run (``max_concurrent_jobs=0`` queues only); running them is the end-to-end
test's business (tests/service/jobs/test_jobs_e2e.py).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.service.helpers import (
    ClientFactory,
    b64,
    bomb_png,
    jpeg_bytes,
    png_bytes,
    series,
    truncated_png,
)
from tests.service.jobs.helpers import (
    BLUE,
    RED,
    assert_error,
    json_body,
    multipart,
    post_json,
)

pytestmark = pytest.mark.anyio


async def test_json_adapt_queues_a_job_with_its_files(client_factory: ClientFactory) -> None:
    async with client_factory(max_concurrent_jobs=0) as (client, runtime):
        response = await post_json(client, json_body(method="coop", shots=4, epochs=3, seed=7))
        assert response.status_code == 202, response.text
        job = response.json()
        assert response.headers["location"] == f"/jobs/{job['id']}"
        assert job["state"] == "queued"
        assert job["name"] == "mine"
        assert job["method"] == "coop"
        assert job["classes"] == ["blue thing", "red thing"]
        assert job["images"] == 2
        assert (job["shots"], job["epochs"], job["seed"]) == (4, 3, 7)
        assert job["backbone"] == "tiny"  # the default classifier's
        assert job["data"] == "upload"
        assert job["result"] is None
        assert job["error"] is None
        # the images are on disk, with a manifest, before the 202
        files = runtime.settings.job_root / job["id"] / "images"
        lines = (files / "manifest.jsonl").read_text().splitlines()
        assert [json.loads(line)["label"] for line in lines] == ["red thing", "blue thing"]
        assert all((files / json.loads(line)["path"]).is_file() for line in lines)
        fetched = await client.get(f"/jobs/{job['id']}")
        assert fetched.status_code == 200
        assert fetched.json() == job


async def test_multipart_adapt_with_config_overrides(client_factory: ClientFactory) -> None:
    async with client_factory(max_concurrent_jobs=0) as (client, _):
        data = {
            "name": "mine",
            "method": "coop",
            "labels": ["red thing", "blue thing", "red thing"],
            "config": json.dumps({"lr": 0.01, "n_ctx": 4}),
            "shots": "2",
        }
        files = multipart([], [png_bytes(RED), png_bytes(BLUE), jpeg_bytes()])
        response = await client.post("/adapt", data=data, files=files)
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["config"] == {"lr": 0.01, "n_ctx": 4}
        assert job["shots"] == 2
        assert job["images"] == 3
        assert job["classes"] == ["blue thing", "red thing"]


async def test_mini_backbone_gets_the_methods_mini_preset(client_factory: ClientFactory) -> None:
    async with client_factory(max_concurrent_jobs=0) as (client, _):
        response = await post_json(client, json_body(method="pre", backbone="mini"))
        assert response.status_code == 202, response.text
        assert response.json()["preset"] == "mini"
        response = await post_json(client, json_body(method="coop", backbone="mini"))
        assert response.json()["preset"] == "mini"
        response = await post_json(client, json_body(method="zeroshot", backbone="mini"))
        assert response.status_code == 202, response.text
        assert response.json()["preset"] is None  # zeroshot has no presets


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [
        (json_body(method="nope"), 422, "invalid_request", ["nope", "coop", "provp", "pmpo"]),
        (json_body(config={"not_a_field": 1}), 422, "invalid_request", ["not_a_field"]),
        (json_body(config={"lr": "fast"}), 422, "invalid_request", ["lr"]),
        (json_body(name="../etc"), 422, "invalid_request", ["invalid classifier name"]),
        (json_body(name="a b"), 422, "invalid_request", ["invalid classifier name"]),
        (json_body(backbone="tiny@/etc/passwd"), 422, "invalid_request", ["not allowed"]),
        (json_body(backbone="/srv/weights.safetensors"), 422, "invalid_request", ["not allowed"]),
        (json_body(backbone="NoSuchNet"), 422, "invalid_request", ["NoSuchNet"]),
        (json_body(preset="nope", method="pre"), 422, "invalid_request", ["preset"]),
        (json_body(epochs=100000), 422, "invalid_request", ["epochs"]),
        (json_body(config={"epochs": 100000}), 422, "invalid_request", ["epochs"]),
        (json_body(shots=0), 422, "invalid_request", ["shots"]),
        (json_body(extra=1), 422, "invalid_request", ["extra"]),
        (
            json_body(images=[{"data": b64(png_bytes()), "label": "only"}] * 3),
            422,
            "invalid_request",
            ["at least 2 classes"],
        ),
        (json_body(images=[]), 422, "invalid_request", ["no images"]),
        (
            json_body(images=[{"data": b64(png_bytes()), "label": " "}] * 2),
            422,
            "invalid_request",
            ["no label"],
        ),
        (
            json_body(images=[{"data": b64(png_bytes()), "label": "x" * 201}] * 2),
            422,
            "invalid_request",
            ["200 characters"],
        ),
        (
            json_body(images=[{"data": "%%%", "label": "a"}, {"data": "", "label": "b"}]),
            400,
            "invalid_image",
            ["base64"],
        ),
        (
            json_body(
                images=[
                    {"data": b64(b"not an image"), "label": "a"},
                    {"data": b64(png_bytes()), "label": "b"},
                ]
            ),
            400,
            "invalid_image",
            ["image 0"],
        ),
        (
            json_body(
                images=[
                    {"data": b64(png_bytes()), "label": "a"},
                    {"data": b64(truncated_png()), "label": "b"},
                ]
            ),
            400,
            "invalid_image",
            ["image 1"],
        ),
        (
            json_body(
                images=[
                    {"data": b64(png_bytes()), "label": "a"},
                    {"data": b64(bomb_png()), "label": "b"},
                ]
            ),
            413,
            "image_too_large",
            ["image 1"],
        ),
        (json_body(dataset="cats"), 422, "invalid_request", ["either images"]),
        ({"name": "mine"}, 422, "invalid_request", ["either images"]),
        ([1, 2], 422, "invalid_request", []),
    ],
)
async def test_bad_json_requests_are_refused_and_queue_nothing(
    client_factory: ClientFactory, body: Any, status: int, code: str, words: list[str]
) -> None:
    async with client_factory(max_concurrent_jobs=0) as (client, _):
        assert_error(await post_json(client, body), status, code, *words)
        assert (await client.get("/jobs")).json()["data"] == []
        assert (await client.get("/health/live")).status_code == 200


async def test_too_many_images_is_413(client_factory: ClientFactory) -> None:
    async with client_factory(max_concurrent_jobs=0, max_job_images=3) as (client, _):
        images = [{"data": b64(png_bytes()), "label": f"c{i % 2}"} for i in range(4)]
        assert_error(await post_json(client, json_body(images=images)), 413, "too_many_images")


async def test_bad_multipart_requests(client_factory: ClientFactory) -> None:
    async with client_factory(max_concurrent_jobs=0) as (client, _):
        files = multipart([])
        response = await client.post("/adapt", data={"name": "m", "labels": ["a"]}, files=files)
        assert_error(response, 422, "invalid_request", "2 images and 1 labels")
        data = {"name": "m", "labels": ["a", "b"], "config": "[1]"}
        response = await client.post("/adapt", data=data, files=files)
        assert_error(response, 422, "invalid_request", "JSON object")
        data = {"name": "m", "labels": ["a", "b"], "colour": "red"}
        response = await client.post("/adapt", data=data, files=files)
        assert_error(response, 422, "invalid_request", "colour")
        response = await client.post("/adapt", content=b"x", headers={"content-type": "text/plain"})
        assert_error(response, 415, "unsupported_media_type")
        response = await client.post(
            "/adapt", content=b"{", headers={"content-type": "application/json"}
        )
        assert_error(response, 400, "invalid_body")


async def test_dataset_references_stay_under_the_data_root(
    client_factory: ClientFactory, tmp_path: Path
) -> None:
    from tests.helpers import make_image_folder

    root = tmp_path / "data"
    make_image_folder(root / "colours", {"red": RED, "blue": BLUE}, per_class=3)
    make_image_folder(tmp_path / "outside", {"red": RED, "blue": BLUE}, per_class=3)
    (root / "one").mkdir()
    make_image_folder(root / "one", {"red": RED}, per_class=2)
    async with client_factory(max_concurrent_jobs=0) as (client, _):
        response = await post_json(client, {"name": "m", "dataset": "colours"})
        assert_error(response, 400, "bad_request", "no data root")
    async with client_factory(max_concurrent_jobs=0, data_root=root) as (client, _):
        response = await post_json(client, {"name": "m", "dataset": "colours", "shots": 2})
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["data"] == "colours"
        assert job["classes"] == ["blue", "red"]
        assert job["images"] == 6
        for outside in ("../outside", str(tmp_path / "outside"), "colours/../../outside"):
            response = await post_json(client, {"name": "m", "dataset": outside})
            assert_error(response, 400, "bad_request", "outside the data root")
        response = await post_json(client, {"name": "m", "dataset": "missing"})
        assert_error(response, 422, "invalid_request", "cannot open dataset")
        assert str(root) not in response.json()["error"]["message"]
        response = await post_json(client, {"name": "m", "dataset": "one"})
        assert_error(response, 422, "invalid_request", "fewer than 2 classes")


@pytest.mark.parametrize(
    ("from_data", "cap", "status"),
    [
        (300, 200, 422),  # the data asks for more than the cap; the method's default (50) fits
        (5, 40, 202),  # the method's default (50) is over the cap; what is trained (5) fits
    ],
)
async def test_the_epoch_cap_holds_for_the_config_that_is_trained(
    client_factory: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    from_data: int,
    cap: int,
    status: int,
) -> None:
    """The data's layer of the method config counts (training resolves it through
    `training.recipe.resolve_config`), so the cap is checked on the epochs training will run."""
    from promptserve.training import recipe

    monkeypatch.setattr(recipe, "data_defaults", lambda method, source: {"epochs": from_data})
    async with client_factory(max_concurrent_jobs=0, max_job_epochs=cap) as (client, _):
        response = await post_json(client, json_body(method="coop"))
        assert response.status_code == status, response.text
        if status == 422:
            assert_error(response, 422, "invalid_request", f"at most {cap}", str(from_data))
        # an explicit request still wins over the data's layer
        response = await post_json(client, json_body(method="coop", epochs=cap + 1))
        assert_error(response, 422, "invalid_request", f"at most {cap}")


async def test_idempotency_key_returns_the_same_job(client_factory: ClientFactory) -> None:
    async with client_factory(max_concurrent_jobs=0) as (client, runtime):
        first = await post_json(client, json_body(), **{"Idempotency-Key": "abc"})
        again = await post_json(client, json_body(), **{"Idempotency-Key": "abc"})
        assert first.status_code == again.status_code == 202
        assert again.json()["id"] == first.json()["id"]
        other = await post_json(client, json_body(seed=2), **{"Idempotency-Key": "abc"})
        assert_error(other, 422, "idempotency_conflict", first.json()["id"])
        fresh = await post_json(client, json_body(), **{"Idempotency-Key": "def"})
        assert fresh.json()["id"] != first.json()["id"]
        listing = (await client.get("/jobs")).json()["data"]
        assert len(listing) == 2
        # the repeated and the refused requests left no files behind
        job_dirs = sorted(p.name for p in runtime.settings.job_root.iterdir() if p.is_dir())
        assert job_dirs == sorted(job["id"] for job in listing)


@pytest.mark.parametrize("key", ["", "   ", "a\tb", "k" * 256])
async def test_an_empty_or_odd_idempotency_key_is_refused(
    client_factory: ClientFactory, key: str
) -> None:
    async with client_factory(max_concurrent_jobs=0) as (client, runtime):
        refused = await post_json(client, json_body(), **{"Idempotency-Key": key})
        assert_error(refused, 422, "invalid_request")
        assert (await client.get("/jobs")).json()["data"] == []


async def test_jobs_list_pages_newest_first(client_factory: ClientFactory) -> None:
    async with client_factory(max_concurrent_jobs=0) as (client, _):
        ids = [(await post_json(client, json_body(seed=i))).json()["id"] for i in range(3)]
        page = (await client.get("/jobs", params={"limit": 2})).json()
        assert [j["id"] for j in page["data"]] == ids[::-1][:2]
        assert page["has_more"]
        rest = (await client.get("/jobs", params={"after": page["next_after"]})).json()
        assert [j["id"] for j in rest["data"]] == ids[:1]
        assert not rest["has_more"]
        assert_error(await client.get("/jobs", params={"after": "job-x"}), 422, "invalid_request")
        assert_error(await client.get("/jobs", params={"limit": 0}), 422, "invalid_request")
        # the queue shows in the metrics once the runner has polled
        for _ in range(50):
            metrics = (await client.get("/metrics")).text
            if series(metrics, "promptserve_jobs_queued") == {(): 3}:
                break
            await asyncio.sleep(0.1)
        assert series(metrics, "promptserve_jobs_queued") == {(): 3}
        assert series(metrics, "promptserve_jobs_running") == {(): 0}


async def test_cancel_a_queued_job_then_cancel_again_is_409(client_factory: ClientFactory) -> None:
    async with client_factory(max_concurrent_jobs=0) as (client, runtime):
        job = (await post_json(client, json_body())).json()
        uploads = runtime.settings.job_root / job["id"] / "images"
        assert uploads.is_dir()
        response = await client.post(f"/jobs/{job['id']}/cancel")
        assert not uploads.exists()  # an ended job's images are not kept by default
        assert response.status_code == 200
        assert response.json()["state"] == "cancelled"
        assert_error(await client.post(f"/jobs/{job['id']}/cancel"), 409, "job_finished")
        events = (await client.get(f"/jobs/{job['id']}/events")).json()
        assert [e["message"] for e in events["data"]] == [
            "job created",
            "job cancelled before it started",
        ]
        later = await client.get(
            f"/jobs/{job['id']}/events", params={"after": events["data"][0]["seq"]}
        )
        assert len(later.json()["data"]) == 1
        for path in ("/jobs/job-none", "/jobs/job-none/events"):
            assert_error(await client.get(path), 404, "unknown_job")
        assert_error(await client.post("/jobs/job-none/cancel"), 404, "unknown_job")


async def test_job_routes_need_the_api_key(client_factory: ClientFactory) -> None:
    async with client_factory(max_concurrent_jobs=0, api_key="sesame") as (client, _):
        good = {"Authorization": "Bearer sesame"}
        assert_error(await post_json(client, json_body()), 401, "unauthorized")
        job = (await client.post("/adapt", json=json_body(), headers=good)).json()
        for method, path in [
            ("GET", "/jobs"),
            ("GET", f"/jobs/{job['id']}"),
            ("GET", f"/jobs/{job['id']}/events"),
            ("POST", f"/jobs/{job['id']}/cancel"),
        ]:
            assert_error(await client.request(method, path), 401, "unauthorized")
            wrong = {"Authorization": "Bearer nope"}
            assert_error(await client.request(method, path, headers=wrong), 401, "unauthorized")
            assert (await client.request(method, path, headers=good)).status_code == 200


async def test_the_queued_jobs_limit_holds_for_concurrent_posts(
    client_factory: ClientFactory,
) -> None:
    # every POST passes the early check (nothing is queued yet when they arrive); the check in
    # the insert's transaction is what keeps the queue at its limit
    async with client_factory(max_concurrent_jobs=0, max_queued_jobs=3) as (client, runtime):
        answers = await asyncio.gather(
            *(post_json(client, json_body(name=f"c{n}")) for n in range(8))
        )
        queued = runtime.jobs.count("queued")
        job_folders = [p for p in runtime.settings.job_root.iterdir() if p.is_dir()]
    assert sorted(r.status_code for r in answers) == [202] * 3 + [429] * 5
    refused = [r for r in answers if r.status_code == 429]
    assert all(r.json()["error"]["code"] == "too_many_jobs" for r in refused)
    assert all("retry-after" in r.headers for r in refused)
    assert queued == 3
    assert len(job_folders) == 3  # the refused ones' uploads were removed
