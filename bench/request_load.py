"""Server CPU per request at the server's own defaults, light load against heavy and a phone
photo against its decode (not a test; prints a table).

A real `promptserve serve` on `mini`, started with nothing set but the device, the log level
and a high in-flight limit (so ONNX Runtime's threads are the defaults, min(4, CPUs)), is loaded
by `wrk` (`bench/wrk/classify.lua`, multipart) and the CPU time of its processes is read from
`/proc`. Per server configuration:

- a 64 px PNG at 8 connections and at 64: server CPU ms per request, and their ratio (a
  server whose idle engine threads spin between small batches costs more per request when
  lightly loaded);
- a 12 MP JPEG (4032 x 3024, quality 90, `bench/preprocess.py`'s synthetic photo) at 2
  connections: server CPU ms per request, against the decode and preprocess of that file on
  one thread in this process (`prepare_image`, the server's own fast path; thread CPU time).

Configurations: ``--spinning false`` (the default) and ``true``
(``PROMPTSERVE_ONNX_SPINNING``), each a fresh server on one store.

    python bench/request_load.py                     # both configurations, ~3 minutes
    python bench/request_load.py --spinning false --seconds 15 --json out.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the decode is measured on one thread

import argparse
import json
import sys
import tempfile
from pathlib import Path

from preprocess import MAX_PIXELS, encoded, ms_per_call
from processes import cpu_seconds, descendants, free_port
from request_cpu import small_png
from vs_naive import Server, launch, server_env, wrk

from promptserve.models.backbone import load_backbone
from promptserve.models.preprocess import FastEvalTransform
from promptserve.service.classify.decoding import prepare_image


def start(store: Path, spinning: str, log: Path) -> Server:
    """`promptserve serve` as `bench/vs_naive.py` starts it (its defaults), with the spinning
    setting and without this process's OMP_* (set here for the decode only)."""
    port = free_port()
    env = {k: v for k, v in server_env().items() if not k.startswith("OMP_")}
    command = [sys.executable, "-m", "promptserve.service.cli", "serve", "--store", str(store)]
    command += ["--port", str(port)]
    env["PROMPTSERVE_ONNX_SPINNING"] = spinning
    return launch(f"promptserve (spinning {spinning})", command, port, env, log)


def cpu_ms_per_request(
    server: Server, image: Path, connections: int, seconds: int
) -> tuple[float, float]:
    """(server CPU ms per request, requests per second) of one run after 2 s of warm-up."""
    wrk(server.url, image, connections, 2)
    pids = descendants(server.process.pid)
    cpu0 = cpu_seconds(pids)
    requests, elapsed, _ = wrk(server.url, image, connections, seconds)
    return 1000 * (cpu_seconds(pids) - cpu0) / requests, requests / elapsed


def measure(spinning: str, store: Path, files: dict[str, Path], args) -> dict[str, float]:
    server = start(store, spinning, store.parent / f"server-{spinning}.log")
    try:
        row = {}
        for name, connections, image in (
            ("png_c8", 8, files["png"]),
            ("png_c64", 64, files["png"]),
            ("jpeg12mp_c2", 2, files["jpeg"]),
        ):
            row[f"{name}_ms"], row[f"{name}_rps"] = cpu_ms_per_request(
                server, image, connections, args.seconds
            )
            print(f"spinning={spinning} {name}: {row[f'{name}_ms']:.2f} ms", file=sys.stderr)
        return row
    finally:
        server.process.terminate()
        server.process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spinning", nargs="+", default=["false", "true"])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        files = {"png": Path(folder) / "small.png", "jpeg": Path(folder) / "photo.jpg"}
        files["png"].write_bytes(small_png(64))
        files["jpeg"].write_bytes(encoded(4032, 3024, "JPEG"))
        transform = FastEvalTransform(load_backbone("mini").preprocess)
        data = files["jpeg"].read_bytes()
        _, decode_ms = ms_per_call(lambda: prepare_image(data, transform, MAX_PIXELS), 5.0)
        rows = {s: measure(s, Path(folder) / "store", files, args) for s in args.spinning}
    print(
        f"\nmini, wrk -t1 multipart, {args.seconds} s runs, {os.cpu_count()} CPUs; "
        f"12 MP JPEG decode + preprocess on one thread: {decode_ms:.1f} ms\n"
    )
    print(
        "| ONNX Runtime spinning | 64 px PNG, 8 conns: ms/req (req/s) | 64 conns: ms/req (req/s)"
        " | 8 / 64 | 12 MP JPEG, 2 conns: ms/req | / decode |"
    )
    print("|---|---|---|---|---|---|")
    for spinning, r in rows.items():
        print(
            f"| {spinning} | {r['png_c8_ms']:.2f} ({r['png_c8_rps']:.0f}) "
            f"| {r['png_c64_ms']:.2f} ({r['png_c64_rps']:.0f}) "
            f"| {r['png_c8_ms'] / r['png_c64_ms']:.2f} | {r['jpeg12mp_c2_ms']:.1f} "
            f"| {r['jpeg12mp_c2_ms'] / decode_ms:.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"decode_ms": decode_ms, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
