"""Connection-level attacks against a real `promptserve serve` on ``mini``, each for
`--seconds`, while one other client sends plain classifies (a 64 px PNG) one after another.

- ``slow-body``: 4 uploads declaring 20 MB that send a byte every 10 s, 64 that send 1 KB of a
  valid body and go silent, and 4 open chunked requests; each reconnects when cut off.
- ``idle``: 5,000 connections that send nothing and 500 that send a header line every 2 s,
  reopened as the server closes them.
- ``huge-header``: 4 connections sending one header in 1 MiB pieces, never ending it.
- ``huge-pixels``: 8 clients posting a 3 KB PNG that declares 5000 x 5000 pixels.

The attackers run in their own process, so they do not slow the measuring client. Reported per
attack: the plain classify's p50 / p99 and its statuses, and the server's open file descriptors
and RSS (from /proc/PID) before, at their peak during, and 5 s after the attack.

    python bench/attacks.py                      # every attack, 30 s each
    python bench/attacks.py --seconds 10 --attacks idle huge-header
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overload import free_port, rss_mb, small_png, start_server  # noqa: E402

BOUNDARY = "b0undary"
PART = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
    "Content-Type: image/png\r\n\r\n"
).encode()


def huge_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("P", (5000, 5000)).save(buffer, format="PNG")
    return buffer.getvalue()


def upload_head(declared: int) -> bytes:
    return (
        f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n".encode()
        + PART
    )


CHUNKED = (
    b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Type: application/json\r\n\r\n"
)


async def attacker(port: int, until: float, head: bytes, piece: bytes, every: float) -> None:
    """One hostile connection, reopened whenever the server closes it: `head`, then `piece`
    every `every` seconds (no piece: nothing more)."""
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head)
            while time.monotonic() < until:
                if piece:
                    writer.write(piece)
                    await writer.drain()
                try:  # the server's answer (or close) ends this connection
                    await asyncio.wait_for(reader.read(65536), timeout=every)
                    break
                except TimeoutError:
                    continue
            writer.close()
        except OSError:
            await asyncio.sleep(0.05)


async def pixel_client(port: int, until: float) -> None:
    data = huge_png()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
        while time.monotonic() < until:
            try:
                await http.post("/classify", content=data, headers={"Content-Type": "image/png"})
            except httpx.TransportError:
                await asyncio.sleep(0.05)


async def attack(name: str, port: int, seconds: float) -> None:
    until = time.monotonic() + seconds
    if name == "slow-body":
        jobs = [attacker(port, until, upload_head(20_000_000), b"x", 10) for _ in range(4)]
        silent = upload_head(4_000_000) + b"x" * 1024
        jobs += [attacker(port, until, silent, b"", 60) for _ in range(64)]
        jobs += [attacker(port, until, CHUNKED, b"", 60) for _ in range(4)]
    elif name == "idle":
        jobs = [attacker(port, until, b"", b"", 60) for _ in range(5000)]
        jobs += [
            attacker(port, until, b"GET /health/live HTTP/1.1\r\n", b"X-a: b\r\n", 2)
            for _ in range(500)
        ]
    elif name == "huge-header":
        head = b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: "
        jobs = [attacker(port, until, head, b"a" * (1 << 20), 0.01) for _ in range(4)]
    else:
        jobs = [pixel_client(port, until) for _ in range(8)]
    await asyncio.gather(*jobs)


def run_attack(name: str, port: int, seconds: float) -> None:
    asyncio.run(attack(name, port, seconds))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def measure(
    port: int, pid: int, seconds: float
) -> tuple[list[tuple[int, float]], int, float]:
    """Plain classifies one after another for `seconds`, each timed from the start of the call
    (a reconnect included: the server may have closed an idle keep-alive connection), and the
    server's peak file descriptors and RSS."""
    png, results = small_png(), list[tuple[int, float]]()
    peak = [0, 0.0]
    until = time.monotonic() + seconds

    async def sample() -> None:
        while time.monotonic() < until:
            peak[:] = [max(peak[0], open_fds(pid)), max(peak[1], rss_mb(pid))]
            await asyncio.sleep(0.5)

    sampling = asyncio.create_task(sample())
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        while time.monotonic() < until:
            start = time.perf_counter()
            try:
                response = await http.post(
                    "/classify", content=png, headers={"Content-Type": "image/png"}
                )
                status = response.status_code
            except httpx.TransportError:
                status = 0
            results.append((status, time.perf_counter() - start))
    await sampling
    return results, int(peak[0]), float(peak[1])


def main() -> None:
    names = ["slow-body", "idle", "huge-header", "huge-pixels"]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--attacks", nargs="+", choices=names, default=names)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        port = free_port()
        store, log = Path(scratch) / "store", Path(scratch) / "server.log"
        process = start_server(store, port, log, {})
        pid = process.pid
        try:
            url = f"http://127.0.0.1:{port}/classify"
            for _ in range(20):  # warm
                httpx.post(url, content=small_png(), headers={"Content-Type": "image/png"})
            for name in args.attacks:
                before = (open_fds(pid), rss_mb(pid))
                hostile = context.Process(target=run_attack, args=(name, port, args.seconds))
                hostile.start()
                time.sleep(1)  # the attack under way
                results, fds, rss = asyncio.run(measure(port, pid, args.seconds - 1))
                hostile.join()
                time.sleep(5)
                after = (open_fds(pid), rss_mb(pid))
                rows.append((name, results, before, (fds, rss), after))
        finally:
            process.terminate()
            process.wait(timeout=60)
    print(f"{args.seconds:.0f} s per attack against mini, one plain classify client")
    print(
        "| attack | plain classify p50 / p99 (ms) | statuses | fds before / peak / after "
        "| RSS MB before / peak / after |"
    )
    print("|---|---|---|---|---|")
    for name, results, before, during, after in rows:
        times = sorted(seconds for status, seconds in results if status == 200)
        p50 = 1000 * statistics.median(times) if times else float("nan")
        p99 = 1000 * times[int(0.99 * (len(times) - 1))] if times else float("nan")
        statuses = dict(sorted(Counter(status for status, _ in results).items()))
        print(
            f"| {name} | {p50:.0f} / {p99:.0f} | {statuses} | {before[0]} / {during[0]} / "
            f"{after[0]} | {before[1]:.0f} / {during[1]:.0f} / {after[1]:.0f} |"
        )


if __name__ == "__main__":
    main()
