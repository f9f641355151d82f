"""What uvicorn's HTTP protocols cost per request: httptools as uvicorn ships it, httptools
with the service's connection limits (`service.connections.GuardedProtocol`), and h11 with
``h11_max_incomplete_event_size`` (uvicorn's other way to cap a request head).

Each runs a uvicorn server in its own process with a trivial ASGI app (a 2-byte 200), so the
figure is the protocol's own work; one client sends `--requests` GETs with browser-sized
headers, one at a time over one keep-alive connection. Reported: the server process's CPU time
per request (from /proc/PID/stat) and the client's wall time per request.

    python bench/http_protocols.py --requests 5000
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

SERVER = """
import sys, uvicorn
from promptserve.service.connections import ConnectionLimits, GuardedProtocol
import functools

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})

kind, port = sys.argv[1], int(sys.argv[2])
options = {}
if kind == "guarded":
    limits = ConnectionLimits(max_header_bytes=65536, max_headers=100, header_timeout_s=10,
                              max_connections=4096)
    options["http"] = functools.partial(GuardedProtocol, limits=limits)
elif kind == "h11":
    options = {"http": "h11", "h11_max_incomplete_event_size": 65536}
else:
    options["http"] = "httptools"
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, **options)
"""

REQUEST = (
    b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Mozilla/5.0 (X11; Linux "
    b"x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36\r\n"
    b"Accept: application/json\r\nAccept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: en-GB,en;q=0.9\r\nAuthorization: Bearer 0123456789abcdef\r\n"
    b"Cookie: session=0123456789abcdef0123456789abcdef\r\n\r\n"
)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(kind: str, requests: int) -> tuple[float, float]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", SERVER, kind, str(port)])
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        for _ in range(200):  # warm-up
            conn.sendall(REQUEST)
            conn.recv(4096)
        cpu, start = cpu_seconds(server.pid), time.perf_counter()
        for _ in range(requests):
            conn.sendall(REQUEST)
            conn.recv(4096)  # one small response a request
        wall = time.perf_counter() - start
        cpu = cpu_seconds(server.pid) - cpu
        conn.close()
        return cpu / requests, wall / requests
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args()
    print("| protocol | server CPU µs / request | wall µs / request |")
    print("|---|---|---|")
    for kind in ("httptools", "guarded", "h11"):
        cpu, wall = measure(kind, args.requests)
        print(f"| {kind} | {cpu * 1e6:.0f} | {wall * 1e6:.0f} |", flush=True)


if __name__ == "__main__":
    main()
