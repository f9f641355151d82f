"""Serving throughput: the raw engine against the whole HTTP path (not a test; prints a table).

For each backbone (default: the embedded ``mini`` and ``ViT-B-16`` with seeded random weights,
since no real weights can be downloaded here) it publishes zero-shot classifiers with 10 and
1000 classes into a scratch store, then measures

  (a) raw engine throughput: ``Classifier.embed`` on preprocessed batches of 32;
  (b) end-to-end throughput: ``promptserve serve`` as a real uvicorn process (``--workers N``
      API worker processes), concurrent clients posting one JPEG each to ``POST /classify``
      (decode, preprocess, batch, engine, score), from ``wrk`` with ``bench/wrk/classify.lua``
      (a C load generator, so the clients take little of the server's CPU) or, without wrk,
      from httpx clients in this process;
  (c) b / a;
  (d) p50 / p99 latency of single-image requests from one client at a time (low load);
  (e) end-to-end throughput of the 1000-class classifier relative to the 10-class one.

    python bench/serve_throughput.py                      # both backbones, ~10 minutes on 2 cores
    python bench/serve_throughput.py --backbones mini --seconds 10 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch

from promptserve.models.artifact import publish_classifier
from promptserve.models.backbone import load_backbone
from promptserve.models.classifier import load_classifier
from promptserve.models.engines import ONNX_FILE, OnnxEngine
from promptserve.models.methods import create_method

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    backbone: str
    raw: float  # images/s
    http: float  # images/s, 10 classes
    http_1000: float  # images/s, 1000 classes
    p50_ms: float
    p99_ms: float


def publish(store: Path, backbone: str, classes: int) -> str:
    name = f"{backbone.lower().replace('-', '')}-{classes}"
    learner = create_method("zeroshot", load_backbone(backbone))
    names = [f"class {i}" for i in range(classes)]
    # self-contained (format 1): this bench opens the version's own visual.onnx below
    publish_classifier(learner, names, store, name, training={"data": "bench"}, format_version=1)
    return name


def raw_throughput(store: Path, name: str, threads: int, batch: int, seconds: float) -> float:
    torch.set_num_threads(threads)
    version = sorted((store / name).iterdir())[-1]
    classifier = load_classifier(version, engine="onnx")
    classifier.engine = OnnxEngine(version / ONNX_FILE, "cpu", threads)  # as the service does
    size = classifier.preprocess.size
    pixels = torch.randn(batch, 3, size, size)
    classifier.embed(pixels)  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        embeddings = classifier.embed(pixels)
        classifier.logits(embeddings)
        done += batch
    return done / (time.perf_counter() - started)


def jpeg_images(count: int, size: int, seed: int = 0) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        array = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """`promptserve serve` on a free port, stopped on exit."""

    def __init__(
        self,
        store: Path,
        default: str,
        threads: int,
        max_batch: int,
        extra_env: dict[str, str] | None = None,
        workers: int = 1,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTSERVE_")}
        env |= {
            "HF_HUB_OFFLINE": "1",
            "PROMPTSERVE_CREATE_DEFAULT": "false",
            "PROMPTSERVE_DEFAULT_CLASSIFIER": default,
            "PROMPTSERVE_DEVICE": "cpu",
            "PROMPTSERVE_ONNX_THREADS": str(threads),
            "PROMPTSERVE_MAX_BATCH_SIZE": str(max_batch),
            "PROMPTSERVE_MAX_WAIT_MS": "5",
            "PROMPTSERVE_LOG_LEVEL": "warning",
            "PROMPTSERVE_MAX_INFLIGHT_REQUESTS": "4096",  # the clients are the load, not a flood
        } | (extra_env or {})
        command = [sys.executable, "-m", "promptserve.service.cli", "serve", "--store", str(store)]
        command += ["--port", str(self.port), "--workers", str(workers)]
        self.process = subprocess.Popen(command, cwd=REPO, env=env)

    def __enter__(self) -> Server:
        # ready, not just live: a large default classifier takes a while to load and warm
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("the server exited during start-up")
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError("the server was not ready in 600 s")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=120)  # a ViT-B-16 batch in flight may take a while


async def _post(client: httpx.AsyncClient, url: str, name: str, image: bytes) -> None:
    response = await client.post(
        url,
        files=[("images", ("image.jpg", image, "image/jpeg"))],
        data={"classifier": name, "top_k": "5"},
    )
    response.raise_for_status()


async def closed_loop(
    clients: int, seconds: float, send: Callable[[int], Awaitable[None]]
) -> float:
    """Requests/s of `clients` loops each awaiting `send(i)` back to back for `seconds`; loop k
    sends i = k, k + clients, k + 2 * clients, ..."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal done
        i = offset
        while time.perf_counter() < deadline:
            await send(i)
            done += 1
            i += clients

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(clients)))
    return done / (time.perf_counter() - started)


async def http_throughput(
    url: str, name: str, images: list[bytes], clients: int, seconds: float
) -> float:
    endpoint = f"{url}/classify"
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await _post(client, endpoint, name, images[0])  # load and warm the classifier

        async def send(i: int) -> None:
            await _post(client, endpoint, name, images[i % len(images)])

        return await closed_loop(clients, seconds, send)


def wrk_throughput(url: str, name: str, image: bytes, clients: int, seconds: float) -> float:
    """Requests/s of `clients` wrk connections posting `image` as multipart to `name`."""
    lua = REPO / "bench" / "wrk" / "classify.lua"
    with tempfile.NamedTemporaryFile(suffix=".jpg") as file:
        file.write(image)
        file.flush()
        # wrk's default 2 s timeout would abandon requests a slow backbone is still working on
        # (ViT-B-16 on a CPU: 32 clients wait ~7 s), and every retry would add to the load
        command = ["wrk", "-t1", "-c1", "-d2s", "--timeout", "120s", "-s", str(lua), url]
        command += ["--", file.name, "multipart", name]
        # load and warm the classifier with one connection: requests that wrk leaves behind when
        # it stops are still served, and many of them would count against the next run's limits
        subprocess.run(command, capture_output=True, check=True)
        command[2:4] = [f"-c{clients}", f"-d{max(1, round(seconds))}s"]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+(\S+)", output)
    if match is None or "Non-2xx" in output:
        raise RuntimeError(f"wrk failed or saw errors:\n{output}")
    return float(match.group(1))


def end_to_end(url: str, name: str, images: list[bytes], args: argparse.Namespace) -> float:
    if args.load == "wrk":
        return wrk_throughput(url, name, images[0], args.clients, args.seconds)
    return asyncio.run(http_throughput(url, name, images, args.clients, args.seconds))


async def latencies(url: str, name: str, images: list[bytes], requests: int) -> list[float]:
    endpoint = f"{url}/classify"
    async with httpx.AsyncClient(timeout=120) as client:
        await _post(client, endpoint, name, images[0])
        times = []
        for i in range(requests):
            started = time.perf_counter()
            await _post(client, endpoint, name, images[i % len(images)])
            times.append(1000 * (time.perf_counter() - started))
            await asyncio.sleep(0.02)  # low load: one request at a time, with gaps
        return times


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def measure(backbone: str, store: Path, args: argparse.Namespace) -> Row:
    small = publish(store, backbone, 10)
    large = publish(store, backbone, 1000)
    raw = raw_throughput(store, small, args.threads, args.batch, args.seconds)
    size = load_backbone(backbone).preprocess.size
    images = jpeg_images(64, size)
    precision = {"PROMPTSERVE_ENGINE_PRECISION": args.precision}  # the server's; (a): fp32
    with Server(store, small, args.threads, args.batch, precision, args.workers) as server:
        http = end_to_end(server.url, small, images, args)
        http_1000 = end_to_end(server.url, large, images, args)
        times = asyncio.run(latencies(server.url, small, images, args.latency_requests))
    return Row(backbone, raw, http, http_1000, statistics.median(times), percentile(times, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["mini", "ViT-B-16"])
    parser.add_argument("--seconds", type=float, default=30.0, help="per throughput phase")
    parser.add_argument("--clients", type=int, default=32, help="concurrent HTTP clients")
    parser.add_argument("--batch", type=int, default=32, help="raw batch = service max batch")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX threads")
    parser.add_argument("--latency-requests", type=int, default=100)
    parser.add_argument("--workers", type=int, default=1, help="API worker processes")
    parser.add_argument("--precision", choices=["fp32", "int8", "bf16"], default="fp32")
    wrk = "wrk" if shutil.which("wrk") else "httpx"
    parser.add_argument("--load", choices=["wrk", "httpx"], default=wrk, help="(b)'s load")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for backbone in args.backbones:
            rows.append(measure(backbone, Path(scratch) / "store", args))
            print(f"measured {rows[-1]}", file=sys.stderr)

    print(
        f"\ncpu threads {args.threads}, batch {args.batch}, {args.clients} clients ({args.load}), "
        f"{args.workers} API worker(s), {args.seconds:.0f} s per phase, device cpu, server "
        f"precision {args.precision} (raw: fp32)"
    )
    header = (
        f"{'backbone':<10} {'raw img/s':>10} {'http img/s':>11} {'b/a':>6} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'1000-cls img/s':>15} {'1000/10':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.backbone:<10} {r.raw:>10.1f} {r.http:>11.1f} {r.http / r.raw:>6.2f} "
            f"{r.p50_ms:>8.1f} {r.p99_ms:>8.1f} {r.http_1000:>15.1f} {r.http_1000 / r.http:>8.2f}"
        )


if __name__ == "__main__":
    main()
