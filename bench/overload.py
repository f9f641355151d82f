"""Overload: many more clients than the server can serve, against a real `promptserve serve`.

256 clients (by default) each post one small PNG to ``POST /classify`` in a loop for 30 s,
over keep-alive connections, through a minimal asyncio HTTP/1.1 client (so the load generator
costs little of the machine's CPU). The server runs the embedded ``mini`` backbone's zero-shot
default classifier. Reported: the share of 429s, p50 / p99 latency of the accepted (200)
requests, every status seen, the server's RSS before, at its peak and after the load, and the
latency of one request right after the load stops.

    python bench/overload.py                        # 256 clients, 30 s
    python bench/overload.py --ignore-retry-after   # clients that retry after 50 ms instead
    python bench/overload.py --clients 64 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def small_png() -> bytes:
    image = Image.new("RGB", (64, 64), (220, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def start_server(
    store: Path, port: int, log: Path, settings: dict[str, str]
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTSERVE_")}
    env |= {"HF_HUB_OFFLINE": "1", "PROMPTSERVE_LOG_LEVEL": "warning", **settings}
    command = [sys.executable, "-m", "promptserve.service.cli", "serve", "--store", str(store)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=sink, stderr=sink)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit(f"server not ready:\n{log.read_text()}")


async def client(
    port: int,
    request: bytes,
    until: float,
    results: list[tuple[int, float]],
    honour_retry_after: bool,
) -> None:
    reader = writer = None
    while time.monotonic() < until:
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
        assert reader is not None
        start = time.perf_counter()
        try:
            writer.write(request)
            status_line = await reader.readline()
            status = int(status_line.split()[1])
            length, close, retry_after = 0, False, 0.0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "connection" and "close" in value.lower():
                    close = True
                elif name.lower() == "retry-after":
                    retry_after = float(value)
            await reader.readexactly(length)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            results.append((0, time.perf_counter() - start))
            writer.close()
            reader = writer = None
            continue
        results.append((status, time.perf_counter() - start))
        if close:
            writer.close()
            reader = writer = None
        if status == 429:  # a client with a retry policy waits as told (urllib3's Retry does)
            await asyncio.sleep(retry_after if honour_retry_after else 0.05)
    if writer is not None:
        writer.close()


async def load(
    port: int, clients: int, seconds: float, pid: int, honour_retry_after: bool
) -> dict[str, object]:
    body = small_png()
    request = (
        f"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    results: list[tuple[int, float]] = []
    peak = rss_mb(pid)
    until = time.monotonic() + seconds
    tasks = [
        asyncio.create_task(client(port, request, until, results, honour_retry_after))
        for _ in range(clients)
    ]
    while not all(task.done() for task in tasks):
        peak = max(peak, rss_mb(pid))
        await asyncio.sleep(0.25)
    statuses = Counter(status for status, _ in results)
    accepted = sorted(seconds for status, seconds in results if status == 200)
    return {"statuses": statuses, "accepted": accepted, "peak": peak, "total": len(results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=None,
        help="the server's admission limit (default: its own)",
    )
    parser.add_argument(
        "--ignore-retry-after",
        action="store_true",
        help="retry a 429 after 50 ms instead of the Retry-After the server sends (hostile)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        port = free_port()
        settings = {}
        if args.max_inflight is not None:
            settings["PROMPTSERVE_MAX_INFLIGHT_REQUESTS"] = str(args.max_inflight)
        store, log = Path(scratch) / "store", Path(scratch) / "server.log"
        process = start_server(store, port, log, settings)
        try:
            url = f"http://127.0.0.1:{port}/classify"
            for _ in range(20):  # warm
                httpx.post(url, content=small_png(), headers={"Content-Type": "image/png"})
            idle = rss_mb(process.pid)
            honour = not args.ignore_retry_after
            outcome = asyncio.run(load(port, args.clients, args.seconds, process.pid, honour))
            start = time.perf_counter()
            after_status = httpx.post(
                url, content=small_png(), headers={"Content-Type": "image/png"}, timeout=30
            ).status_code
            after_ms = 1000 * (time.perf_counter() - start)
            time.sleep(2)
            after = rss_mb(process.pid)
        finally:
            process.terminate()
            process.wait(timeout=30)
    statuses: Counter[int] = outcome["statuses"]  # type: ignore[assignment]
    accepted: list[float] = outcome["accepted"]  # type: ignore[assignment]
    total = int(outcome["total"])  # type: ignore[call-overload]
    p50 = 1000 * statistics.median(accepted) if accepted else float("nan")
    p99 = 1000 * accepted[int(0.99 * (len(accepted) - 1))] if accepted else float("nan")
    how = "ignoring Retry-After" if args.ignore_retry_after else "honouring Retry-After"
    print(f"{args.clients} clients ({how}) for {args.seconds:.0f} s against mini")
    print(f"requests            {total} ({total / args.seconds:.1f}/s)")
    print(f"statuses            {dict(sorted(statuses.items()))}")
    print(f"429 share           {100 * statuses[429] / max(1, total):.1f} %")
    print(f"accepted            {len(accepted)} ({len(accepted) / args.seconds:.1f}/s)")
    print(f"accepted p50 / p99  {p50:.1f} / {p99:.1f} ms")
    peak = outcome["peak"]
    print(f"server RSS          idle {idle:.0f} MB, peak {peak:.0f} MB, after {after:.0f} MB")
    print(f"first request after {after_status} in {after_ms:.1f} ms")


if __name__ == "__main__":
    main()
