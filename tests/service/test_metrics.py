"""/metrics on prometheus-client, in process: today's series kept, rejects by reason, requests
by classifier (bounded to the store's names), the job series, the process collectors, and the
GPU families (faked at torch.cuda, since CI has no GPU)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from promptserve.service.gpu_metrics import add_gpu_metrics
from promptserve.service.jobs.metrics import JobCollector
from promptserve.service.jobs.store import JobStore
from promptserve.service.metrics import Metrics
from tests.service.helpers import ClientFactory, b64, engine_held, png_bytes, series
from tests.service.jobs.helpers import SPEC, json_body, post_json
from tests.waiting import eventually

pytestmark = pytest.mark.anyio

IMAGE = {"images": [b64(png_bytes())]}
# every family /metrics had before prometheus-client (one process), with its type
TODAYS = {
    "promptserve_http_requests_total": "counter",
    "promptserve_http_request_duration_seconds": "histogram",
    "promptserve_batch_size": "histogram",
    "promptserve_images_total": "counter",
    "promptserve_engine_cpu_seconds_total": "counter",
    "promptserve_device_info": "gauge",
    "promptserve_device_decode_fallbacks_total": "counter",
    "promptserve_queue_depth": "gauge",
    "promptserve_loaded_classifiers": "gauge",
    "promptserve_engines": "gauge",
    "promptserve_loaded_classifier_bytes": "gauge",
    "promptserve_ready": "gauge",
    "promptserve_jobs_running": "gauge",
    "promptserve_jobs_queued": "gauge",
}
NEW = {
    "promptserve_rejected_requests_total": "counter",
    "promptserve_classifier_requests_total": "counter",
    "promptserve_jobs": "gauge",
    "promptserve_jobs_finished_total": "counter",
    "promptserve_job_duration_seconds": "histogram",
    "process_resident_memory_bytes": "gauge",
    "process_cpu_seconds_total": "counter",
    "python_gc_collections_total": "counter",
    "python_info": "gauge",
}


def families(text: str) -> dict[str, str]:
    """Family name -> type, counters named as exposed (with `_total`)."""
    found = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        found[name] = family.type
    return found


async def test_todays_series_are_kept_and_the_new_ones_added(
    client_factory: ClientFactory,
) -> None:
    async with client_factory() as (client, _):
        await client.post("/classify", json=IMAGE)
        response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    exposed = families(response.text)
    assert {name: exposed.get(name) for name in TODAYS} == TODAYS
    assert {name: exposed.get(name) for name in NEW} == NEW
    assert not any(name.startswith("promptserve_gpu_") for name in exposed)  # on the CPU
    requests = series(response.text, "promptserve_http_requests_total")
    assert requests[(("method", "POST"), ("route", "/classify"), ("status", "200"))] == 1
    info = series(response.text, "promptserve_device_info")
    assert [dict(labels)["device"] for labels in info] == ["cpu"]
    assert series(response.text, "process_resident_memory_bytes")[()] > 0


async def test_refusals_count_under_their_reason(client_factory: ClientFactory) -> None:
    """A 429 from admission is `overloaded`, a 413 `too_many_images`; other errors none."""
    limits = {"max_inflight_requests": 1, "max_images_per_request": 1}
    async with client_factory(**limits) as (client, runtime):
        with engine_held(runtime) as entered:
            running = asyncio.create_task(client.post("/classify", json=IMAGE))
            await eventually(entered.is_set)
            refused = await client.post("/classify", json=IMAGE)
        assert (await running).status_code == 200
        too_many = await client.post("/classify", json={"images": IMAGE["images"] * 2})
        not_found = await client.post("/classify", json=IMAGE | {"classifier": "nope"})
        text = (await client.get("/metrics")).text
    assert (refused.status_code, too_many.status_code, not_found.status_code) == (429, 413, 404)
    assert series(text, "promptserve_rejected_requests_total") == {
        (("reason", "overloaded"),): 1,
        (("reason", "too_many_images"),): 1,
    }


async def test_requests_count_under_their_classifier_and_unknown_names_under_other(
    client_factory: ClientFactory,
) -> None:
    async with client_factory() as (client, _):
        for body in (IMAGE, IMAGE | {"classifier": "shapes"}, IMAGE | {"classifier": "shapes@1"}):
            assert (await client.post("/classify", json=body)).status_code == 200
        absent = await client.post("/classify", json=IMAGE | {"classifier": "shapes@9"})
        for i in range(20):  # invented names: no new series
            await client.post("/classify", json=IMAGE | {"classifier": f"invented{i}"})
        await client.post("/classify", json=IMAGE | {"classifier": "../etc"})
        several = {"classifiers": ["default", "shapes"]} | IMAGE
        assert (await client.post("/v1/classify", json=several)).status_code == 200
        embedded = await client.post(
            "/v1/embeddings", json={"classifier": "shapes", "input": IMAGE["images"]}
        )
        text = (await client.get("/metrics")).text
    assert absent.status_code == 404  # a known classifier without that version: its own name
    assert embedded.status_code == 200, embedded.text
    assert series(text, "promptserve_classifier_requests_total") == {
        (("classifier", "default"),): 2,
        (("classifier", "shapes"),): 5,
        (("classifier", "other"),): 21,
    }


async def test_a_cancelled_job_shows_in_the_job_series(client_factory: ClientFactory) -> None:
    async with client_factory(max_concurrent_jobs=0) as (client, _):
        first = (await post_json(client, json_body())).json()
        await post_json(client, json_body(name="other"))
        assert (await client.post(f"/jobs/{first['id']}/cancel")).status_code == 200
        text = (await client.get("/metrics")).text
    jobs = series(text, "promptserve_jobs")
    assert jobs[(("state", "queued"),)] == 1
    assert jobs[(("state", "cancelled"),)] == 1
    assert series(text, "promptserve_jobs_finished_total") == {
        (("reason", "none"), ("state", "cancelled")): 1
    }
    assert series(text, "promptserve_job_duration_seconds_count") == {}  # it never started


def test_job_ends_are_counted_once_by_state_reason_and_duration(tmp_path: Path) -> None:
    """Ends written by any process (here: the store itself, as a job process or another host
    would) are read from the store at each scrape, each counted once."""
    jobs = JobStore(tmp_path / "jobs.db")
    metrics = Metrics()
    metrics.add_collector(JobCollector(jobs))
    ended = []
    for error in ({"reason": "worker_died", "message": "x"}, None):
        job, _ = jobs.create(SPEC, fingerprint=str(error))
        assert jobs.claim(job.id)
        jobs.finish(job.id, "failed" if error else "succeeded", error=error)
        ended.append(job.id)
    first = metrics.expose()
    second = metrics.expose()  # nothing new ended: the counts stay
    for text in (first, second):
        assert series(text, "promptserve_jobs_finished_total") == {
            (("reason", "none"), ("state", "succeeded")): 1,
            (("reason", "worker_died"), ("state", "failed")): 1,
        }
        counts = series(text, "promptserve_job_duration_seconds_count")
        assert counts == {(("state", "failed"),): 1, (("state", "succeeded"),): 1}
    assert series(second, "promptserve_jobs")[(("state", "failed"),)] == 1


def test_gpu_memory_and_utilisation_per_device_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch.cuda calls faked: two devices, utilisation readable on the first only."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda i: 1000 * (i + 1))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda i: 4000 * (i + 1))

    def utilization(index: int) -> int:
        if index:
            raise ModuleNotFoundError("pynvml")
        return 37

    monkeypatch.setattr(torch.cuda, "utilization", utilization)
    on_cuda, on_cpu = Metrics(), Metrics()
    add_gpu_metrics(on_cuda, "cuda:0")
    add_gpu_metrics(on_cpu, "cpu")
    text = on_cuda.expose()
    assert series(text, "promptserve_gpu_memory_allocated_bytes") == {
        (("device", "cuda:0"),): 1000,
        (("device", "cuda:1"),): 2000,
    }
    assert series(text, "promptserve_gpu_memory_reserved_bytes")[(("device", "cuda:1"),)] == 8000
    assert series(text, "promptserve_gpu_utilization_ratio") == {(("device", "cuda:0"),): 0.37}
    assert "promptserve_gpu_" not in on_cpu.expose()


def test_worker_reports_sum_series_by_series() -> None:
    """The engine process's exposition: its own HTTP families plus each worker's snapshot."""
    engine, one, two = Metrics(), Metrics(), Metrics()
    for worker, count in ((one, 2), (two, 3)):
        for _ in range(count):
            worker.observe_request("/classify", "POST", 200, 0.003)
            worker.observe_classifier("shapes")
        worker.observe_reject("queue_full")
    two.observe_reject("something invented")
    engine.worker_states = lambda: [one.http_state(), two.http_state()]
    text = engine.expose()
    route = (("method", "POST"), ("route", "/classify"), ("status", "200"))
    assert series(text, "promptserve_http_requests_total") == {route: 5}
    latency = series(text, "promptserve_http_request_duration_seconds_bucket")
    assert latency[(("le", "0.0025"), ("route", "/classify"))] == 0
    assert latency[(("le", "0.005"), ("route", "/classify"))] == 5
    assert series(text, "promptserve_classifier_requests_total") == {(("classifier", "shapes"),): 5}
    assert series(text, "promptserve_rejected_requests_total") == {
        (("reason", "other"),): 1,
        (("reason", "queue_full"),): 2,
    }
