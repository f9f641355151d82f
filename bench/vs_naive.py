"""promptserve against the naive FastAPI + open_clip server (`bench/naive_peer.py`) in one run
(not a test; prints a table).

    python bench/vs_naive.py                                  # 16 connections, 3 rounds of 10 s
    python bench/vs_naive.py --workers 1 2 --rounds 5 --json bench-out/vs_naive.json

Both serve the same `mini` weights and the same classes (the default classifier a first start
of promptserve makes) on this machine, each at its defaults except the log level and the
admission bound (raised so that nothing is refused). `wrk` (Debian's `wrk`) posts one 64 px
PNG per request as multipart through `bench/wrk/classify.lua`. Every server is started once
and kept running; each round measures every server in turn, after 2 s of warm-up, in an order
that rotates from round to round, so drift of the machine spreads over all of them. Per server:
requests per second, the median latency and the server's CPU per request (utime + stime of
all its processes from /proc). The ratio is promptserve's req/s over the peer's in the same
round; the table gives its median over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from processes import cpu_seconds, descendants, free_port, wait_ready
from request_cpu import LUA, small_png

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    url: str


@dataclass
class Sample:
    server: str
    round: int
    requests_per_s: float
    p50_ms: float
    cpu_ms_per_request: float


def launch(name: str, command: list[str], port: int, env: dict[str, str], log: Path) -> Server:
    sink = log.open("wb")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_ready(process, url, name, log)
    return Server(name, process, url)


def server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTSERVE_")}
    return env | {
        "HF_HUB_OFFLINE": "1",
        "PROMPTSERVE_DEVICE": "cpu",
        "PROMPTSERVE_LOG_LEVEL": "warning",
        "PROMPTSERVE_MAX_INFLIGHT_REQUESTS": "4096",
    }


def promptserve(
    store: Path, workers: int, scratch: Path, env: dict[str, str] | None = None
) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "promptserve.service.cli", "serve", "--store", str(store)]
    command += ["--port", str(port)] + (["--workers", str(workers)] if workers > 1 else [])
    name = f"promptserve ({workers} worker{'s' if workers > 1 else ''})"
    log = scratch / f"promptserve-{workers}.log"
    return launch(name, command, port, server_env() | (env or {}), log)


def peer(store: Path, scratch: Path) -> Server:
    port = free_port()
    command = [sys.executable, str(REPO / "bench" / "naive_peer.py"), "--store", str(store)]
    command += ["--port", str(port)]
    return launch("naive peer", command, port, server_env(), scratch / "peer.log")


def wrk(url: str, image: Path, connections: int, seconds: int) -> tuple[int, float, float]:
    """(requests, seconds measured, median latency in ms) of one wrk run."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    command += ["-s", str(LUA), url, "--", str(image), "multipart"]
    start = time.perf_counter()
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    elapsed = time.perf_counter() - start
    requests = re.search(r"(\d+) requests in", output)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", output)
    if requests is None or p50 is None or "Non-2xx" in output or "Socket errors" in output:
        raise SystemExit(f"wrk failed or saw errors against {url}:\n{output}")
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p50.group(2)]
    return int(requests.group(1)), elapsed, float(p50.group(1)) * unit


def measure(server: Server, image: Path, args: argparse.Namespace, round_: int) -> Sample:
    wrk(server.url, image, args.connections, 2)  # warm-up
    pids = descendants(server.process.pid)
    cpu0 = cpu_seconds(pids)
    requests, seconds, p50 = wrk(server.url, image, args.connections, args.seconds)
    cpu = cpu_seconds(pids) - cpu0
    sample = Sample(server.name, round_, requests / seconds, p50, 1000 * cpu / requests)
    print(f"round {round_}: {sample}", file=sys.stderr, flush=True)
    return sample


def table(samples: list[Sample], servers: list[Server], args: argparse.Namespace) -> str:
    peer_name = servers[-1].name
    by_round = {(s.server, s.round): s for s in samples}
    lines = [
        f"mini, 64 px PNG, multipart, wrk -t1 -c{args.connections}, {args.rounds} rounds of "
        f"{args.seconds} s, {os.cpu_count()} CPUs",
        "",
        "| server | req/s (median) | req/s per round | p50 ms | server CPU ms/request "
        "| x the peer (median of rounds) |",
        "|---|---|---|---|---|---|",
    ]
    for server in servers:
        mine = [by_round[(server.name, r)] for r in range(args.rounds)]
        rates = [s.requests_per_s for s in mine]
        ratios = [s.requests_per_s / by_round[(peer_name, s.round)].requests_per_s for s in mine]
        lines.append(
            f"| {server.name} | {statistics.median(rates):.1f} "
            f"| {', '.join(f'{r:.0f}' for r in rates)} "
            f"| {statistics.median(s.p50_ms for s in mine):.1f} "
            f"| {statistics.median(s.cpu_ms_per_request for s in mine):.2f} "
            f"| {statistics.median(ratios):.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the samples here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        store = scratch / "store"
        image = scratch / "image.png"
        image.write_bytes(small_png(64))
        servers: list[Server] = []
        try:
            for workers in args.workers:  # the first start also makes the default classifier
                servers.append(promptserve(store, workers, scratch))
            servers.append(peer(store, scratch))
            samples = []
            for round_ in range(args.rounds):
                shift = round_ % len(servers)
                for server in servers[shift:] + servers[:shift]:
                    samples.append(measure(server, image, args, round_))
        finally:
            for server in servers:
                server.process.terminate()
                server.process.wait(timeout=60)
    print(table(samples, servers, args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(s) for s in samples], indent=1))


if __name__ == "__main__":
    main()
