"""End to end with ``promptserve serve --workers 2``: two uvicorn API worker processes on one
port, one engine process. Classify is served by both workers, their requests meet in the same
engine batch, a bad request refused in a worker stays a 4xx, a version published or deleted in
the shared store is seen by every worker, and the service exits when its engine process dies.
Each request below opens its own connection, so the kernel spreads them over the workers."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from promptserve.service.remote.worker import REPORT_S
from tests.service.helpers import b64, png_bytes, publish_copy, series
from tests.service.servers import Server, copy_store, start_server, stop_server
from tests.waiting import wait_until

pytestmark = pytest.mark.slow  # real server processes

TWO_WORKERS = {"PROMPTSERVE_WORKERS": "2"}
BATCH = 16
# a batch waits up to 3 s for BATCH images, so a burst of BATCH requests is one batch; a lone
# request would wait the whole 3 s, so only the batching test runs on such a server
BATCHING = TWO_WORKERS | {
    "PROMPTSERVE_MAX_BATCH_SIZE": str(BATCH),
    "PROMPTSERVE_MAX_WAIT_MS": "3000",
}
CLASSIFIED = '{method="POST",route="/classify",status="200"}'


@pytest.fixture(scope="module")
def served(
    template_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Path]]:
    root = tmp_path_factory.mktemp("workers")
    store = copy_store(template_store, root / "store")
    running = start_server(store, root / "server.log", timeout=300, **TWO_WORKERS)
    yield running, store
    stop_server(running)


@pytest.fixture
def server(served: tuple[Server, Path]) -> Server:
    return served[0]


def metric(text: str, name: str) -> dict[str, float]:
    """Every series of `name` in a Prometheus text: labels text (sorted) -> value."""
    return {
        ("{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}" if labels else ""): value
        for labels, value in series(text, name).items()
    }


def scrape(server: Server) -> str:
    return httpx.get(f"{server.url}/metrics", timeout=30).text


def reported(server: Server, classified: float) -> str:
    """A scrape once the workers' reports count `classified` answered classify requests in all
    (each worker reports its counts about once a second, and the worker that answers a scrape
    reports at once). A worker that has answered nothing yet has no series."""

    def probe() -> str | None:
        text = scrape(server)
        done = metric(text, "promptserve_http_requests_total").get(CLASSIFIED, 0.0)
        return text if done >= classified else None

    return wait_until(probe, interval=0.2, what=f"the workers reporting {classified} classified")


def fresh_post(server: Server, **kwargs: object) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=60) as client:  # a new connection
        return client.post("/classify", **kwargs)  # type: ignore[arg-type]


async def burst(server: Server, count: int) -> list[httpx.Response]:
    """`count` concurrent classify requests, each on its own connection."""

    async def one(i: int) -> httpx.Response:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            image = png_bytes((30 * i % 255, 120, 60))
            return await client.post("/classify", json={"images": [b64(image)], "top_k": 1})

    return await asyncio.gather(*(one(i) for i in range(count)))


def test_both_workers_serve_and_share_engine_batches(tmp_path: Path, template_store: Path) -> None:
    """A burst answered by both workers that ran as one engine batch: cross-worker batching."""
    store = copy_store(template_store, tmp_path / "store")
    server = start_server(store, tmp_path / "server.log", timeout=300, **BATCHING)
    try:
        mixed, before, classified = False, reported(server, 0), 0
        for _ in range(8):  # which worker accepts a connection is the kernel's choice: retry
            responses = asyncio.run(burst(server, BATCH))
            assert [r.status_code for r in responses] == [200] * BATCH, [r.text for r in responses]
            classified += BATCH
            after = reported(server, classified)
            batches = metric(after, "promptserve_batch_size_count").get("", 0.0)
            batches -= metric(before, "promptserve_batch_size_count").get("", 0.0)
            # each worker's count grew by its classify requests of the burst plus some of the
            # other requests reported meanwhile (scrapes, health checks); a worker served classify
            # requests when its count grew by more than all those other requests together
            old = metric(before, "promptserve_api_worker_requests_total")
            new = metric(after, "promptserve_api_worker_requests_total")
            others = sum(new.values()) - sum(old.values()) - BATCH
            served = [w for w, count in new.items() if count - old.get(w, 0.0) > others]
            assert len(new) <= 2, new  # two workers report to the engine, no more
            if batches == 1 and len(served) == 2:
                mixed = True
                break
            before = after
    finally:
        stop_server(server)
    assert mixed, "no burst was both spread over the two workers and run as one batch"
    totals = metric(after, "promptserve_http_requests_total")
    assert totals[CLASSIFIED] == classified  # summed over both workers


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"images": ["bm90IGFuIGltYWdl"]}, 400, "invalid_image"),  # refused in the worker
        ({"images": [b64(png_bytes())] * 5}, 413, "too_many_images"),  # in the worker
        ({"images": [b64(png_bytes())], "classifier": "nope"}, 404, "unknown_classifier"),
        ({"images": [b64(png_bytes())], "labels": ["dog", "dog"]}, 422, "invalid_label"),
    ],
    ids=["not-image", "too-many", "unknown-classifier", "duplicate-label"],
)
def test_bad_requests_stay_4xx(
    server: Server, body: dict[str, object], status: int, code: str
) -> None:
    for _ in range(4):  # over fresh connections, so both workers answer some
        response = fresh_post(server, json=body)
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
    good = fresh_post(server, json={"images": [b64(png_bytes())]})
    assert good.status_code == 200, good.text


def test_publish_and_delete_seen_by_every_worker(
    served: tuple[Server, Path], tiny_artifact: Path
) -> None:
    server, store = served
    publish_copy(tiny_artifact, store, "fresh", "1")
    body = {"images": [b64(png_bytes())], "classifier": "fresh"}
    for _ in range(10):
        response = fresh_post(server, json=body)
        assert response.status_code == 200, response.text
        assert response.json()["version"] == "1"
    deleted = httpx.delete(f"{server.url}/classifiers/fresh/1", timeout=30)
    assert deleted.status_code == 204, deleted.text
    for _ in range(10):
        response = fresh_post(server, json=body)
        assert response.status_code == 404, response.text
    per_worker = wait_until(
        lambda: both_served(scrape(server)), what="both workers reporting requests"
    )
    assert len(per_worker) == 2, per_worker


def both_served(text: str) -> dict[str, float] | None:
    """Each worker's reported request count, once both have reported some."""
    per_worker = metric(text, "promptserve_api_worker_requests_total")
    return per_worker if len(per_worker) == 2 and min(per_worker.values()) > 0 else None


def test_new_series_are_summed_over_the_workers(served: tuple[Server, Path]) -> None:
    """Requests by classifier and rejects by reason, counted in whichever worker answered,
    are served summed over both workers (as the HTTP counts are)."""
    server, _ = served
    shapes = '{classifier="shapes"}'
    too_many = '{reason="too_many_images"}'

    def counts(text: str) -> tuple[float, float]:
        by_classifier = metric(text, "promptserve_classifier_requests_total")
        rejected = metric(text, "promptserve_rejected_requests_total")
        return by_classifier.get(shapes, 0.0), rejected.get(too_many, 0.0)

    # an earlier test's requests may not be reported yet: read the counts once they hold still
    # over more than one report interval
    def settled() -> tuple[float, float] | None:
        first = counts(scrape(server))
        time.sleep(2.5 * REPORT_S)
        return first if counts(scrape(server)) == first else None

    before = wait_until(settled, what="the counts to settle")
    for _ in range(6):  # fresh connections: both workers answer some
        good = fresh_post(server, json={"images": [b64(png_bytes())], "classifier": "shapes"})
        assert good.status_code == 200, good.text
    for _ in range(4):
        refused = fresh_post(server, json={"images": [b64(png_bytes())] * 5})
        assert refused.status_code == 413, refused.text
    expected = (before[0] + 6, before[1] + 4)

    def probe() -> tuple[float, float] | None:
        now = counts(scrape(server))
        return now if now[0] >= expected[0] and now[1] >= expected[1] else None

    assert wait_until(probe, interval=0.2, what="the workers reporting") == expected
    per_worker = wait_until(lambda: both_served(scrape(server)), what="both workers reporting")
    assert len(per_worker) == 2, per_worker
    assert metric(scrape(server), "promptserve_api_workers") == {"": 2}


def test_the_service_exits_when_its_engine_process_dies(
    template_store: Path, tmp_path: Path
) -> None:
    """The supervisor's safety path: the engine process killed, the API workers are stopped and
    `serve` exits 1 (a process manager restarts it), instead of workers answering 5xx forever."""
    store = copy_store(template_store, tmp_path / "store")
    log = tmp_path / "server.log"
    server = start_server(store, log, timeout=300, **TWO_WORKERS)
    try:
        started = re.search(r"engine process (\d+) up", log.read_text())
        assert started, log.read_text()
        os.kill(int(started.group(1)), signal.SIGKILL)
        code = server.process.wait(timeout=120)
    finally:
        if server.process.poll() is None:
            stop_server(server)
    assert code == 1, log.read_text()
    assert "the engine process exited" in log.read_text()
