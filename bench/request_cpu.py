"""Server CPU per single-image request, the engine's share taken out (not a test; prints a table).

`promptserve serve` runs as real uvicorn process(es) with ``--workers N``; ``wrk`` (Debian
package ``wrk``, a C load generator that costs little CPU) posts one small PNG per request through
``bench/wrk/classify.lua``, as multipart or as JSON base64. Reported per run:

  server CPU / request   utime + stime of every server process (the API workers, the engine
                         process, the supervisor; read from /proc) over the requests served
  engine / request       the server's own count of CPU seconds in engine calls
                         (``promptserve_engine_cpu_seconds_total``, exact with one ONNX thread)
  non-engine / request   the difference: parsing, decoding, batching, scoring, the response
  non-engine req/s       requests per second of wall time the non-engine work alone would
                         allow on the CPU the server used: requests / (server CPU - engine CPU)
                         * (server CPU / wall s); with N workers this is the rate that scales
  API proc / request     non-engine CPU per request in one API process (with workers, their
                         average; each serves its share of the requests)
  engine-proc loop       with workers: the engine process's CPU outside engine calls (its
                         event loop, the socket, batching, ranking) per request
  non-engine capacity    requests/s the non-engine work sustains with a core per process:
                         1000 / API ms in one process; with N workers
                         min(N * 1000 / API ms, 1000 / engine-proc loop ms). On a machine
                         whose cores the engine and the load generator also need (2 cores
                         here) this is the figure that separates the scaling of the
                         non-engine work from the engine's share

    python bench/request_cpu.py                          # mini, multipart and JSON, 1 and 2 workers
    python bench/request_cpu.py --workers 1 --shapes multipart --seconds 10
    python bench/request_cpu.py --configs --rounds 5 --seconds 10   # see request_cpu_configs.py
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from processes import cpu_seconds, descendants, free_port, wait_ready

REPO = Path(__file__).resolve().parents[1]
LUA = REPO / "bench" / "wrk" / "classify.lua"


@dataclass
class Row:
    workers: int
    shape: str
    requests: int
    seconds: float
    server_cpu_s: float
    engine_cpu_s: float
    api_cpu_s: float  # the API worker processes (workers > 1); 0 in one process
    holder_cpu_s: float  # the process running the engine (the only one when workers == 1)

    @property
    def per_request_ms(self) -> float:
        return 1000 * self.server_cpu_s / self.requests

    @property
    def engine_ms(self) -> float:
        return 1000 * self.engine_cpu_s / self.requests

    @property
    def non_engine_ms(self) -> float:
        return self.per_request_ms - self.engine_ms

    @property
    def non_engine_rate(self) -> float:
        cores_used = self.server_cpu_s / self.seconds
        return self.requests / (self.server_cpu_s - self.engine_cpu_s) * cores_used

    @property
    def api_ms(self) -> float:
        """Non-engine CPU per request in one API process (their average with workers)."""
        if self.workers == 1:
            return 1000 * (self.holder_cpu_s - self.engine_cpu_s) / self.requests
        return 1000 * self.api_cpu_s / self.requests

    @property
    def holder_loop_ms(self) -> float:
        """Non-engine CPU per request in the engine's process (workers > 1: its event loop,
        the socket, batching, ranking)."""
        return 1000 * (self.holder_cpu_s - self.engine_cpu_s) / self.requests

    @property
    def capacity(self) -> float:
        """Requests/s the non-engine work sustains with a core per process: each API process
        serves 1000 / api_ms, and with workers the engine's process must keep up too."""
        if self.workers == 1:
            return 1000 / self.api_ms
        return min(self.workers * 1000 / self.api_ms, 1000 / self.holder_loop_ms)


def split_cpu(pids: list[int], root: int, workers: int) -> tuple[float, float]:
    """(CPU of the API worker processes, CPU of the engine's process) among `pids`. With
    workers, the supervisor spawns the engine process first and waits for it before it starts
    uvicorn's workers, so the engine's is the lowest pid among the spawned processes."""
    if workers == 1:
        return 0.0, cpu_seconds([root])
    spawned = sorted(p for p in pids if p != root and "spawn_main" in _cmdline(p))
    return cpu_seconds(spawned[1:]), cpu_seconds(spawned[:1])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def engine_cpu(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    match = re.search(r"^promptserve_engine_cpu_seconds_total (\S+)$", text, re.MULTILINE)
    if match is None:
        raise RuntimeError("the server exposes no promptserve_engine_cpu_seconds_total")
    return float(match.group(1))


def small_png(size: int) -> bytes:
    array = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def start(
    store: Path,
    workers: int,
    args: argparse.Namespace,
    extra: dict[str, str] | None = None,
    log=None,
    checkout: Path = REPO,
) -> tuple[subprocess.Popen, str]:
    """A ready server; `extra`: more environment, `log`: a file for its output, `checkout`:
    the repository whose code it runs (with its own ``.venv``; this one's by default)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTSERVE_")}
    env |= {
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PROMPTSERVE_DEVICE": "cpu",
        "PROMPTSERVE_DEFAULT_BACKBONE": args.backbone,
        "PROMPTSERVE_ONNX_THREADS": "1",  # the engine counter is then all of the engine's CPU
        "PROMPTSERVE_DECODE_THREADS": "2",
        "PROMPTSERVE_LOG_LEVEL": "warning",
        "PROMPTSERVE_MAX_INFLIGHT_REQUESTS": "4096",
    } | (extra or {})
    python = sys.executable if checkout == REPO else str(checkout / ".venv" / "bin" / "python")
    command = [python, "-m", "promptserve.service.cli", "serve", "--store", str(store)]
    command += ["--port", str(port)] + (["--workers", str(workers)] if workers > 1 else [])
    process = subprocess.Popen(
        command, cwd=checkout, env=env, stdout=log, stderr=log and subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(process, url, "the server", log and getattr(log, "name", None))
    return process, url


def run_wrk(url: str, image: Path, shape: str, args: argparse.Namespace) -> int:
    command = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "--latency"]
    command += ["-s", str(LUA), url, "--", str(image), shape]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = re.search(r"(\d+) requests in", output)
    if match is None or "Non-2xx" in output:
        raise RuntimeError(f"wrk failed or saw errors:\n{output}")
    return int(match.group(1))


def measure(store: Path, workers: int, image: Path, args: argparse.Namespace) -> list[Row]:
    process, url = start(store, workers, args)
    try:
        return [measure_one(process, url, workers, shape, image, args) for shape in args.shapes]
    finally:
        process.terminate()
        process.wait(timeout=60)


def measure_one(
    process: subprocess.Popen, url: str, workers: int, shape: str, image: Path, args
) -> Row:
    """One measured wrk run against a running server, after 2 s of warm-up."""
    warm = argparse.Namespace(**{**vars(args), "seconds": 2})
    run_wrk(url, image, shape, warm)
    pids = descendants(process.pid)
    cpu0, engine0, t0 = cpu_seconds(pids), engine_cpu(url), time.perf_counter()
    api0, holder0 = split_cpu(pids, process.pid, workers)
    requests = run_wrk(url, image, shape, args)
    seconds = time.perf_counter() - t0
    cpu1 = cpu_seconds(pids)
    api1, holder1 = split_cpu(pids, process.pid, workers)
    engine1 = engine_cpu(url)
    cpu, engine, api, holder = cpu1 - cpu0, engine1 - engine0, api1 - api0, holder1 - holder0
    row = Row(workers, shape, requests, seconds, cpu, engine, api, holder)
    print(f"measured {row}", file=sys.stderr)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="mini")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--shapes", nargs="+", default=["multipart", "json"])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64, help="PNG side, px")
    parser.add_argument("--store", type=Path, default=None, help="reuse a store (else a temp one)")
    parser.add_argument("--configs", nargs="*", help="compare server environments (none: all)")
    parser.add_argument("--rounds", type=int, default=5, help="with --configs: rounds")
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        help="with --configs: also run the code of this checkout (with its own .venv) as 'before'",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    if args.configs is not None:
        from request_cpu_configs import compare_configs

        sys.exit(compare_configs(args))
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        store = args.store or Path(scratch) / "store"
        image = Path(scratch) / "image.png"
        image.write_bytes(small_png(args.image_size))
        for workers in args.workers:
            rows.extend(measure(store, workers, image, args))

    print(
        f"\n{args.backbone}, {args.image_size} px PNG, wrk -t1 -c{args.connections} "
        f"{args.seconds} s, onnx_threads 1, {os.cpu_count()} CPUs"
    )
    header = (
        f"{'workers':>7} {'body':<10} {'req/s':>8} {'server ms/req':>14} {'engine ms/req':>14} "
        f"{'non-engine ms/req':>18} {'non-engine req/s':>17} {'API proc ms/req':>16} "
        f"{'engine-proc loop ms/req':>24} {'non-engine capacity req/s':>26}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.workers:>7} {r.shape:<10} {r.requests / r.seconds:>8.1f} "
            f"{r.per_request_ms:>14.2f} {r.engine_ms:>14.2f} {r.non_engine_ms:>18.2f} "
            f"{r.non_engine_rate:>17.1f} {r.api_ms:>16.2f} "
            f"{r.holder_loop_ms if r.workers > 1 else float('nan'):>24.2f} {r.capacity:>26.1f}"
        )


if __name__ == "__main__":
    main()
