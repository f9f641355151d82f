"""The inline-decode shortcut is chosen by the pixels an image declares, not its bytes: a tiny
file of 25 Mpx is decoded on the pool, never on the event loop."""

from __future__ import annotations

import asyncio
import io
import threading
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from promptserve.service.classify import images
from tests.service.helpers import ClientFactory, b64, png_bytes

pytestmark = pytest.mark.anyio


def huge_png(mode: str) -> bytes:
    """5000 x 5000 of one colour: about 3 KB, 230 ms to decode."""
    buffer = io.BytesIO()
    Image.new(mode, (5000, 5000)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("shape", ["raw", "json"])
async def test_a_small_file_of_many_pixels_is_decoded_off_the_loop(
    client_factory: ClientFactory, monkeypatch: pytest.MonkeyPatch, shape: str
) -> None:
    threads: list[str] = []
    original = images.prepare_image

    def recording(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(images, "prepare_image", recording)
    async with client_factory() as (client, _):
        for data in (png_bytes(), huge_png("1"), huge_png("P")):
            assert len(data) < 32 * 1024  # all three are under INLINE_DECODE_BYTES
            if shape == "raw":
                response = await client.post(
                    "/classify", content=data, headers={"Content-Type": "image/png"}
                )
            else:
                response = await client.post("/classify", json={"images": [b64(data)]})
            assert response.status_code == 200, response.text
    loop_thread = threading.current_thread().name  # the in-process app runs on this loop
    assert threads[0] == loop_thread  # 40 x 40: inline
    assert all(name.startswith("decode") for name in threads[1:]), threads


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def test_memory_of_large_decodes_goes_back(
    client_factory: ClientFactory,
) -> None:
    """Eight concurrent 25 Mpx decodes take some 200 MB; once they are done the decode
    threads' freed buffers are handed back (malloc_trim), not kept by the process."""
    data = huge_png("P")
    headers = {"Content-Type": "image/png"}
    async with client_factory(decode_threads=4) as (client, _):
        await client.post("/classify", content=png_bytes(), headers=headers)
        before = rss_mb()
        posts = [client.post("/classify", content=data, headers=headers) for _ in range(8)]
        assert {r.status_code for r in await asyncio.gather(*posts)} == {200}
        after = rss_mb()
    assert after - before < 80, (before, after)
