"""A real server under the heavy requests that used to stall it: a plain classification still
answers at once."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service.helpers import b64, bomb_png, png_bytes
from tests.service.servers import Server, copy_store, start_server, stop_server

pytestmark = [pytest.mark.anyio, pytest.mark.slow]  # a real server process


def noisy_png(seed: int, size: int = 320) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()  # ~300 KB: noise does not compress


@pytest.fixture(scope="module")
def server(template_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("overload")
    running = start_server(
        copy_store(template_store, root / "store"),
        root / "server.log",
        timeout=180,
        PROMPTSERVE_MAX_BODY_BYTES=str(20 * 1024 * 1024),
        PROMPTSERVE_MAX_IMAGES_PER_REQUEST="16",
        PROMPTSERVE_MAX_CONCURRENT_JOBS="0",  # jobs are queued, never trained, here
        PROMPTSERVE_MAX_QUEUED_JOBS="100",
    )
    yield running
    stop_server(running)


async def test_a_plain_classify_answers_while_heavy_requests_are_in_flight(server: Server) -> None:
    labels = [f"label {i}" for i in range(20_000)]
    strips = [("images", (f"{i}.png", bomb_png(1_562_500, 16))) for i in range(16)]
    uploads = [("images", (f"{i}.png", noisy_png(i))) for i in range(40)]
    fields = {"name": "big", "labels": [str(i % 2) for i in range(40)]}
    plain = png_bytes()
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:

        async def plain_latency() -> float:
            start = time.perf_counter()
            response = await client.post(
                "/classify", content=plain, headers={"Content-Type": "image/png"}
            )
            assert response.status_code == 200, response.text
            return time.perf_counter() - start

        baseline = sorted([await plain_latency() for _ in range(5)])[2]  # idle, same machine
        heavy = [
            client.post("/classify", json={"images": [b64(plain)], "labels": labels}),
            client.post("/classify", files=strips),
            *[client.post("/adapt", files=uploads, data=fields) for _ in range(6)],
        ]
        in_flight = [asyncio.create_task(request) for request in heavy]
        await asyncio.sleep(0)  # let them start sending
        latencies = [await plain_latency() for _ in range(3)]
        overlapped = not all(task.done() for task in in_flight[2:])
        answers = await asyncio.gather(*in_flight)
    assert overlapped, "the uploads ended before the plain requests were measured"
    assert max(latencies) < 0.5 + 10 * baseline, (baseline, latencies)
    assert answers[0].status_code == 422
    assert answers[1].status_code == 413
    codes = [r.status_code for r in answers[2:]]
    assert set(codes) <= {202, 429}, [r.text for r in answers[2:]]
    assert 202 in codes  # at least one upload was admitted and read while we measured
