"""The GPU path in one run: raw engine img/s, preprocessing img/s and end-to-end HTTP img/s
(not a test; prints tables and writes JSON). Made to be run once on a GPU host:

    python bench/gpu.py --out gpu.json                       # ViT-B-16 on cuda, ~10 minutes
    python bench/gpu.py --device cpu --backbone mini --seconds 2 --clients 1 4 \\
        --large 1000x750 --out smoke.json                    # smoke test anywhere

Sections:

  engine      `Classifier.embed` on pixels already on the device, per ONNX Runtime variant
              (copy: no IO binding, the pixels go to the host and back; bound: IO binding;
              fp16; tensorrt and tensorrt-fp16 when the provider is present) and batch size.
  preprocess  `ImagePreparer.prepare` on requests of 16 encoded images, 12 MP photos and
              224 px JPEGs: the CPU fast path on every core, and on CUDA batched nvJPEG
              decoding on the device.
  http        `promptserve serve` as a real process (engine options from --server-variant),
              concurrent clients each posting one JPEG per request, at each client count;
              clients run in several processes so that the load generator is not the limit.

The backbone has seeded random weights unless its spec names pretrained ones; speed does not
depend on the weights. Model output is discarded: this measures speed only.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preprocess import synthetic_photo  # noqa: E402
from serve_throughput import Server, publish  # noqa: E402

from promptserve.models.classifier import load_classifier  # noqa: E402
from promptserve.models.engines import OnnxOptions  # noqa: E402
from promptserve.models.preprocess import FastEvalTransform  # noqa: E402
from promptserve.models.providers import tensorrt_problem  # noqa: E402
from promptserve.service.classify.images import ImagePreparer  # noqa: E402

VARIANTS: dict[str, OnnxOptions] = {
    "copy": OnnxOptions(io_binding=False),
    "bound": OnnxOptions(io_binding=True),
    "fp16": OnnxOptions(fp16=True),
    "tensorrt": OnnxOptions(tensorrt=True),
    "tensorrt-fp16": OnnxOptions(tensorrt=True, fp16=True),
}
SERVER_ENV = {  # the settings each --server-variant sets
    "copy": {"PROMPTSERVE_ONNX_IO_BINDING": "false"},
    "bound": {},
    "fp16": {"PROMPTSERVE_ONNX_FP16": "true"},
    "tensorrt": {"PROMPTSERVE_ONNX_TENSORRT": "true"},
    "tensorrt-fp16": {"PROMPTSERVE_ONNX_TENSORRT": "true", "PROMPTSERVE_ONNX_FP16": "true"},
}
REQUEST_IMAGES = 16  # images per request in the preprocessing section


@dataclass
class Rate:
    section: str
    what: str  # variant or input
    batch: int  # engine batch, images per request, or HTTP clients
    img_s: float
    providers: str = ""  # the ONNX Runtime providers the engine's session really got


def usable(variant: str, device: str) -> bool:
    options = VARIANTS[variant]
    if device == "cpu":
        return not options.fp16 and not options.tensorrt
    return not options.tensorrt or tensorrt_problem() is None  # libnvinfer really loads


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def rate(run: Callable[[], int], device: str, seconds: float) -> float:
    """Items per second of `run` (which returns the items it did), after one warm-up call."""
    run()
    sync(device)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        done += run()
    sync(device)
    return done / (time.perf_counter() - started)


def engine_rates(version: Path, args: argparse.Namespace, cache: Path) -> list[Rate]:
    rows = []
    for variant in args.variants:
        if not usable(variant, args.device):
            print(f"engine: skipping {variant} on {args.device}", file=sys.stderr)
            continue
        options = VARIANTS[variant]
        if options.tensorrt:
            options = OnnxOptions(
                tensorrt=True,
                fp16=options.fp16,
                trt_cache_dir=cache,
                max_batch_size=max(args.batch),
            )
        classifier = load_classifier(version, device=args.device, options=options)
        got = ",".join(getattr(classifier.engine, "providers", []))
        size = classifier.preprocess.size
        for batch in args.batch:
            pixels = torch.randn(batch, 3, size, size, device=args.device)

            def run(pixels: torch.Tensor = pixels, classifier: Any = classifier) -> int:
                classifier.embed(pixels)
                return int(pixels.shape[0])

            rows.append(Rate("engine", variant, batch, rate(run, args.device, args.seconds), got))
            print(
                f"engine {variant} batch {batch}: {rows[-1].img_s:.0f} img/s on {got}",
                file=sys.stderr,
            )
    return rows


def jpegs(width: int, height: int, count: int) -> list[bytes]:
    out = []
    for seed in range(count):
        buffer = io.BytesIO()
        synthetic_photo(width, height, seed).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def preprocess_rates(
    inputs: dict[str, list[bytes]], size: int, args: argparse.Namespace
) -> list[Rate]:
    from promptserve.models.backbone import PreprocessConfig

    cfg = PreprocessConfig(size=size, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    transform = FastEvalTransform(cfg)
    threads = os.cpu_count() or 1
    ways = [("cpu", ImagePreparer(threads, 25_000_000, device=args.device))]
    if args.device.startswith("cuda"):
        ways.append(("nvjpeg", ImagePreparer(threads, 25_000_000, args.device, True)))
    rows = []
    for way, preparer in ways:
        for label, images in inputs.items():
            request = (images * REQUEST_IMAGES)[:REQUEST_IMAGES]

            def run(request: list[bytes] = request, preparer: ImagePreparer = preparer) -> int:
                asyncio.run(preparer.prepare(request, transform, size))
                return len(request)

            rows.append(
                Rate(
                    "preprocess",
                    f"{way} {label}",
                    REQUEST_IMAGES,
                    rate(run, args.device, args.seconds),
                )
            )
            print(f"preprocess {way} {label}: {rows[-1].img_s:.0f} img/s", file=sys.stderr)
        preparer.close()
    return rows


def _client_process(
    url: str, name: str, images: list[bytes], clients: int, start_at: float, seconds: float
) -> int:
    """`clients` concurrent clients from `start_at` (wall clock) for `seconds`; requests done."""

    async def go() -> int:
        done = 0
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(timeout=300, limits=limits) as client:
            await asyncio.sleep(max(0.0, start_at - time.time()))  # all processes start together
            deadline = time.perf_counter() + seconds

            async def worker(offset: int) -> None:
                nonlocal done
                i = offset
                while time.perf_counter() < deadline:
                    response = await client.post(
                        f"{url}/classify",
                        files=[("images", ("image.jpg", images[i % len(images)], "image/jpeg"))],
                        data={"classifier": name, "top_k": "1"},
                    )
                    response.raise_for_status()
                    done += 1
                    i += clients

            await asyncio.gather(*(worker(k) for k in range(clients)))
        return done

    return asyncio.run(go())


def http_rates(
    url: str, name: str, inputs: dict[str, list[bytes]], args: argparse.Namespace
) -> list[Rate]:
    """Requests that finish within the window count; the rate is over the window, so a
    request still running at its end is not counted (a slight underestimate at low rates)."""
    rows = []
    procs = max(1, min(args.client_procs, max(args.clients)))
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        for label, images in inputs.items():
            _client_process(url, name, images[:1], 1, 0.0, 0.0)  # warm: loads the classifier
            for clients in args.clients:
                used = min(procs, clients)
                shares = [clients // used + (k < clients % used) for k in range(used)]
                start_at = time.time() + 1.0
                jobs = [(url, name, images, n, start_at, args.seconds) for n in shares]
                img_s = sum(pool.starmap(_client_process, jobs)) / args.seconds
                rows.append(Rate("http", label, clients, img_s))
                print(f"http {label} {clients} clients: {img_s:.0f} img/s", file=sys.stderr)
    return rows


def machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": device,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "providers_built": ort.get_available_providers(),  # the build; each row has its own
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (smoke test)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 32, 128])
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 8, 32, 128])
    parser.add_argument("--client-procs", type=int, default=max(1, (os.cpu_count() or 2) // 4))
    parser.add_argument("--server-variant", default="bound", choices=list(VARIANTS))
    parser.add_argument("--server-env", nargs="*", default=[], help="more KEY=VALUE settings")
    parser.add_argument("--seconds", type=float, default=15.0, help="per measurement")
    parser.add_argument("--large", type=parse_size, default=(4032, 3024), help="photo WxH")
    parser.add_argument("--out", type=Path, default=Path("gpu.json"))
    parser.add_argument("--skip", nargs="*", default=[], choices=["engine", "preprocess", "http"])
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("CUDA is not available here; use --device cpu for a smoke test")

    rows: list[Rate] = []
    with tempfile.TemporaryDirectory() as scratch:
        store = Path(scratch) / "store"
        name = publish(store, args.backbone, 10)
        version = sorted((store / name).iterdir())[-1]
        size = load_classifier(version).preprocess.size
        inputs = {
            f"{args.large[0]}x{args.large[1]} JPEG": jpegs(*args.large, 4),
            "224 px JPEG": jpegs(224, 224, 16),
        }
        if "engine" not in args.skip:
            rows += engine_rates(version, args, Path(scratch) / "trt")
        if "preprocess" not in args.skip:
            rows += preprocess_rates(inputs, size, args)
        if "http" not in args.skip:
            env = {"PROMPTSERVE_DEVICE": args.device.split(":")[0]}
            env |= {"PROMPTSERVE_DECODE_THREADS": str(os.cpu_count() or 1)}
            env |= SERVER_ENV[args.server_variant]
            env |= dict(item.split("=", 1) for item in args.server_env)
            with Server(store, name, min(4, os.cpu_count() or 1), max(args.batch), env) as server:
                rows += http_rates(server.url, name, inputs, args)

    result = {
        "machine": machine(args.device),
        "backbone": args.backbone,
        "input_size": size,
        "server_variant": args.server_variant,
        "seconds": args.seconds,
        "rows": [asdict(row) for row in rows],
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{args.backbone} on {result['machine'].get('gpu', args.device)}; img/s")
    print(f"{'section':<11} {'what':<32} {'batch/clients':>13} {'img/s':>9}")
    for row in rows:
        print(f"{row.section:<11} {row.what:<32} {row.batch:>13} {row.img_s:>9.1f}")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
