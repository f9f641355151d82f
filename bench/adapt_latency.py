"""`/classify` latency while a tuning job runs, and the time a default job takes (not a test).

Serves a store whose default classifier is zero-shot over the synthetic colour-shape classes on
``mini`` (a real `promptserve serve` process), then:

  1. p50 / p99 of single-image ``/classify`` requests, one at a time with 20 ms gaps, idle;
  2. the same while a long ``coop`` job trains (submitted with ``POST /adapt``, cancelled after);
  3. for comparison, 2. again with the worker's isolation off (niceness 0, as many torch threads
     as CPUs);
  4. a default job (``coop``, its defaults on mini: 16 shots, the `mini` preset) on 4 x 24 uploaded
     images named by part numbers ("part-17"): wall time from the 202 to ``succeeded``, the
     training time inside it, and the accuracy on the 8 images per class it held out, tuned and
     zero-shot (names the backbone has never seen: where tuning has to do the work).

    python bench/adapt_latency.py                 # ~3 minutes on 2 cores
    python bench/adapt_latency.py --requests 100  # quicker, noisier
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from serve_throughput import Server, latencies, percentile

from promptserve.service.catalog import create_default_classifier
from promptserve.training.synthetic.tasks import SyntheticSpec, render_item

CLASSES = {
    "red circle": "part-17",
    "blue square": "part-42",
    "green star": "part-88",
    "yellow heart": "part-95",
}


def png_images(split: str, per_class: int) -> list[tuple[bytes, str]]:
    """Colour-shape images labelled with their classes' part numbers."""
    spec = SyntheticSpec(task="color-shape", seed=3)
    images = []
    for name, part in CLASSES.items():
        for i in range(per_class):
            buffer = io.BytesIO()
            render_item(spec, split, name, i).save(buffer, format="PNG")
            images.append((buffer.getvalue(), part))
    return images


def submit(url: str, images: list[tuple[bytes, str]], **fields: Any) -> dict[str, Any]:
    files = [("images", (f"{i}.png", data, "image/png")) for i, (data, _) in enumerate(images)]
    data = {"labels": [label for _, label in images]} | {k: str(v) for k, v in fields.items()}
    response = httpx.post(f"{url}/adapt", files=files, data=data, timeout=60)
    response.raise_for_status()
    return dict(response.json())


def wait(url: str, job_id: str, until: Any, timeout: float = 900) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/jobs/{job_id}", timeout=30).json()
        if until(job):
            return dict(job)
        time.sleep(0.2)
    raise RuntimeError(f"job {job_id} timed out: {job}")


def latency_row(label: str, url: str, images: list[bytes], requests: int) -> dict[str, Any]:
    times = asyncio.run(latencies(url, "default", images, requests))
    return {
        "case": label,
        "p50": statistics.median(times),
        "p99": percentile(times, 99),
        "n": len(times),
    }


def under_load(
    url: str, images: list[bytes], uploads: list[tuple[bytes, str]], args: Any, label: str
) -> dict[str, Any]:
    job = submit(url, uploads, name="load", method="coop", epochs=args.load_epochs)
    wait(url, job["id"], lambda j: j["state"] == "running" and j["progress"])
    row = latency_row(label, url, images, args.requests)
    state = wait(url, job["id"], lambda j: True)["state"]
    if state != "running":
        raise RuntimeError(
            f"the load job ended ({state}) before the measurement did: raise --load-epochs"
        )
    httpx.post(f"{url}/jobs/{job['id']}/cancel", timeout=60)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--load-epochs", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads")
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    probes = [data for data, _ in png_images("test", 4)]
    uploads = png_images("train", 16)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        store = Path(scratch) / "store"
        create_default_classifier(store, "default", "mini")
        long_jobs = {"PROMPTSERVE_MAX_JOB_EPOCHS": str(args.load_epochs)}
        with Server(store, "default", args.threads, 32, long_jobs) as server:
            rows.append(latency_row("idle", server.url, probes, args.requests))
            rows.append(under_load(server.url, probes, uploads, args, "job running (isolated)"))
            started = time.perf_counter()
            job = submit(server.url, png_images("train", 24), name="demo")
            done = wait(server.url, job["id"], lambda j: j["state"] not in ("queued", "running"))
            wall = time.perf_counter() - started
        isolation_off = long_jobs | {
            "PROMPTSERVE_JOB_NICENESS": "0",
            "PROMPTSERVE_JOB_THREADS": str(cpus),
        }
        with Server(store, "default", args.threads, 32, isolation_off) as server:
            rows.append(latency_row("idle", server.url, probes, args.requests))
            rows.append(
                under_load(
                    server.url, probes, uploads, args, f"job running (niceness 0, {cpus} threads)"
                )
            )
    print(
        f"\nmini backbone, CPU x{cpus}, ONNX threads {args.threads}; job worker: niceness 10, "
        f"{max(1, cpus // 2)} thread(s) unless noted"
    )
    print(f"{'case':<40} {'p50 ms':>8} {'p99 ms':>8} {'n':>5}")
    for row in rows:
        print(f"{row['case']:<40} {row['p50']:>8.1f} {row['p99']:>8.1f} {row['n']:>5}")
    result = done["result"] or {}
    print(
        f"\ndefault job (coop, 4 classes x 24 images, 16 shots, mini preset): {done['state']}, "
        f"{wall:.1f} s from POST /adapt to published; training {result.get('seconds')} s; "
        f"accuracy: train {result.get('train_accuracy')} %, held-out "
        f"{result.get('heldout_accuracy')} % vs zero-shot "
        f"{result.get('heldout_zeroshot_accuracy')} % ({result.get('heldout_images')} images)"
    )


if __name__ == "__main__":
    main()
