"""Many tuned classifiers on one backbone (not a test; prints a table).

Publishes `--coop` coop and `--provp` provp classifiers (seeded random prompts, distinct label
sets) on the embedded ``mini`` backbone into a scratch store, serves it with ``promptserve
serve`` (a real uvicorn process; `--max-loaded` classifiers kept) and measures, one image per
request from `--clients` concurrent clients:

  (a) img/s of traffic to one classifier vs round-robin traffic over all of the method's;
  (b) added server memory (RSS) per loaded classifier, and the classifiers' own bytes;
  (c) store disk per classifier version;
  (d) the first request to a classifier that is not loaded vs a warm request (median);
  (e) one request naming 10 coop classifiers vs one naming one (median latency).

`--vit` adds (b) for provp on ``ViT-B-16`` with seeded random weights, in-process (exporting
its shared graph takes minutes on two cores).

    python bench/multitenant.py                    # mini; ~10 minutes on 2 cores
    python bench/multitenant.py --coop 20 --provp 5 --seconds 5
    python bench/multitenant.py --vit 6 --vit-only  # provp memory on ViT-B-16
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import torch
from serve_throughput import Server, closed_loop, jpeg_images

from promptserve.models.artifact import publish_classifier
from promptserve.models.backbone import Backbone, load_backbone
from promptserve.models.methods import create_method, get_method

CLASSES = 10  # per classifier; every classifier has its own label set


def publish(store: Path, backbone: Backbone, method: str, count: int) -> list[str]:
    """`count` classifiers of `method` with seeded random learned tensors."""
    preset = get_method(method).presets.get("mini", {}) if backbone.id.spec == "mini" else {}
    names = []
    for index in range(count):
        learner = create_method(method, backbone, preset)
        generator = torch.Generator().manual_seed(index)
        with torch.no_grad():
            for param in learner.trainable_parameters():
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
        labels = [f"{method} {index} class {c}" for c in range(CLASSES)]
        name = f"{method}-{index}"
        publish_classifier(learner, labels, store, name, training={"data": "bench"})
        names.append(name)
    return names


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def version_bytes(store: Path, name: str) -> int:
    return sum(f.stat().st_size for f in (store / name / "1").iterdir())


async def post(client: httpx.AsyncClient, url: str, image: bytes, **fields: str) -> None:
    files = [("images", ("image.jpg", image, "image/jpeg"))]
    response = await client.post(f"{url}/classify", files=files, data=fields | {"top_k": "5"})
    response.raise_for_status()


async def throughput(
    url: str, names: list[str], images: list[bytes], clients: int, seconds: float
) -> float:
    """img/s with request i naming names[i % len(names)]."""
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def send(i: int) -> None:
            await post(client, url, images[i % len(images)], classifier=names[i % len(names)])

        return await closed_loop(clients, seconds, send)


async def timed(client: httpx.AsyncClient, url: str, image: bytes, **fields: str) -> float:
    started = time.perf_counter()
    await post(client, url, image, **fields)
    return 1000 * (time.perf_counter() - started)


async def cold_and_warm(url: str, names: list[str], image: bytes) -> tuple[float, float]:
    """Median ms of the first request to each of `names` (not loaded) and of a second one."""
    async with httpx.AsyncClient(timeout=120) as client:
        await post(client, url, image, classifier="default")  # connection and engine warm
        cold, warm = [], []
        for name in names:
            cold.append(await timed(client, url, image, classifier=name))
            warm.append(await timed(client, url, image, classifier=name))
            await asyncio.sleep(0.02)
    return statistics.median(cold), statistics.median(warm)


async def several(url: str, names: list[str], image: bytes, requests: int) -> tuple[float, float]:
    """Median ms of a request naming names[0] alone and of one naming all of `names`."""
    async with httpx.AsyncClient(timeout=120) as client:
        await post(client, url, image, classifiers=",".join(names))  # load them all
        one, many = [], []
        for _ in range(requests):
            one.append(await timed(client, url, image, classifier=names[0]))
            many.append(await timed(client, url, image, classifiers=",".join(names)))
            await asyncio.sleep(0.02)
    return statistics.median(one), statistics.median(many)


async def load_all(url: str, names: list[str], image: bytes) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        for name in names:
            await post(client, url, image, classifier=name)


def loaded_bytes(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("promptserve_loaded_classifier_bytes "):
            return float(line.split()[1])
    raise RuntimeError("/metrics has no promptserve_loaded_classifier_bytes")


def serve_figures(args: argparse.Namespace) -> None:
    backbone = load_backbone("mini")
    size = backbone.preprocess.size
    images = jpeg_images(64, size)
    with tempfile.TemporaryDirectory() as scratch:
        store = Path(scratch)
        started = time.perf_counter()
        publish_classifier(create_method("zeroshot", backbone), ["a", "b"], store, "default")
        coop = publish(store, backbone, "coop", args.coop)
        provp = publish(store, backbone, "provp", args.provp)
        print(
            f"published {args.coop} coop + {args.provp} provp classifiers in "
            f"{time.perf_counter() - started:.0f} s"
        )
        disk_coop = statistics.mean(version_bytes(store, n) for n in coop)
        disk_provp = statistics.mean(version_bytes(store, n) for n in provp)
        env = {"PROMPTSERVE_MAX_LOADED_CLASSIFIERS": str(args.max_loaded)}
        with Server(store, "default", args.threads, 32, env) as server:
            url = server.url
            rows = []
            for method, names in (("coop", coop), ("provp", provp)):
                asyncio.run(load_all(url, names[:1], images[0]))
                one = asyncio.run(throughput(url, names[:1], images, args.clients, args.seconds))
                rr = asyncio.run(throughput(url, names, images, args.clients, args.seconds))
                rows.append((method, len(names), one, rr))
            print(f"\n| traffic (mini, {args.clients} clients, 1 image/request) | img/s | vs one |")
            print("|---|---|---|")
            for method, count, one, rr in rows:
                print(f"| one {method} classifier | {one:.1f} | 1.00 |")
                print(f"| round-robin over {count} {method} | {rr:.1f} | {rr / one:.2f} |")

        # memory: a fresh server, then every classifier of a method loaded
        env = {"PROMPTSERVE_MAX_LOADED_CLASSIFIERS": str(args.coop + args.provp + 1)}
        with Server(store, "default", args.threads, 32, env) as server:
            url, pid = server.url, server.process.pid
            print("\n| per loaded classifier (mini) | RSS added | own tensors | disk |")
            print("|---|---|---|---|")
            for method, names, disk in (("coop", coop, disk_coop), ("provp", provp, disk_provp)):
                asyncio.run(load_all(url, names[:1], images[0]))  # engine open and warm
                before, own_before = rss_mb(pid), loaded_bytes(url)
                asyncio.run(load_all(url, names[1:], images[0]))
                count = len(names) - 1
                added = (rss_mb(pid) - before) * 1024 / count
                own = (loaded_bytes(url) - own_before) / 1024 / count
                print(f"| {method} | {added:.0f} KiB | {own:.1f} KiB | {disk / 1024:.1f} KiB |")

        # cold first requests: classifiers not loaded (an LRU of 1 evicts each at once)
        env = {"PROMPTSERVE_MAX_LOADED_CLASSIFIERS": "2"}
        with Server(store, "default", args.threads, 32, env) as server:
            cold, warm = asyncio.run(cold_and_warm(server.url, coop[: args.cold], images[1]))
            one, many = asyncio.run(several(server.url, coop[:10], images[2], args.requests))
        print("\n| latency (mini, one client) | median ms |")
        print("|---|---|")
        print(f"| first request to a coop classifier not loaded | {cold:.1f} |")
        print(f"| the next request to it (warm) | {warm:.1f} (cold +{cold - warm:.1f}) |")
        print(f"| one request naming 1 coop classifier | {one:.1f} |")
        print(f"| one request naming 10 coop classifiers | {many:.1f} ({many / one:.2f}x) |")


def vit_provp_memory(count: int) -> None:
    """Own bytes and RSS added per loaded provp classifier on ViT-B-16 (random weights)."""
    from promptserve.service.catalog import Catalog
    from promptserve.service.classify.cache import ClassifierCache

    backbone = load_backbone("ViT-B-16")
    with tempfile.TemporaryDirectory() as scratch:
        store = Path(scratch)
        started = time.perf_counter()
        names = publish(store, backbone, "provp", count)
        print(
            f"\npublished {count} provp classifiers on ViT-B-16 "
            f"in {time.perf_counter() - started:.0f} s"
        )
        del backbone
        gc.collect()
        classifiers = ClassifierCache(Catalog(store), max_loaded=count + 1)
        classifiers.get(names[0])
        before, own_before = rss_mb(os.getpid()), classifiers.loaded_bytes()
        for name in names[1:]:
            classifiers.get(name)
        added = (rss_mb(os.getpid()) - before) / (count - 1)
        own = (classifiers.loaded_bytes() - own_before) / 2**20 / (count - 1)
        disk = statistics.mean(version_bytes(store, n) for n in names) / 2**20
        print("| per loaded provp classifier (ViT-B-16, M=16) | RSS added | own tensors | disk |")
        print("|---|---|---|---|")
        print(f"| provp | {added:.2f} MiB | {own:.2f} MiB | {disk:.2f} MiB |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coop", type=int, default=100)
    parser.add_argument("--provp", type=int, default=20)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0, help="per throughput figure")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    parser.add_argument("--max-loaded", type=int, default=128, help="classifiers kept loaded")
    parser.add_argument("--cold", type=int, default=20, help="classifiers for the cold figure")
    parser.add_argument("--requests", type=int, default=30, help="for the several figure")
    parser.add_argument("--vit", type=int, default=0, help="provp classifiers on ViT-B-16")
    parser.add_argument("--vit-only", action="store_true", help="skip the mini figures")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.vit_only:
        serve_figures(args)
    if args.vit:
        vit_provp_memory(args.vit)


if __name__ == "__main__":
    main()
