"""A real `promptserve serve` process on a free port, for the end-to-end tests, and the store a
first start leaves (the default classifier on mini), made once per session and copied."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from promptserve.models.backbone import WEIGHTS_DIR

REPO = Path(__file__).resolve().parents[2]
MINI_WEIGHTS = WEIGHTS_DIR / "mini.safetensors"
FIRST_START_LOG = "first-start.log"  # beside the template store: the first start's own log
LIMITS = {
    "PROMPTSERVE_MAX_BODY_BYTES": "200000",
    "PROMPTSERVE_MAX_IMAGES_PER_REQUEST": "4",
    "PROMPTSERVE_MAX_WAIT_MS": "5",
    "PROMPTSERVE_DEVICE": "cpu",
    "PROMPTSERVE_ONNX_THREADS": "1",
    "PROMPTSERVE_DECODE_THREADS": "2",
}


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(store: Path, log: Path, timeout: float, **env: str) -> Server:
    """`promptserve serve` on a free port, ready. A free port can be taken between choosing it
    and the server binding it (another test's server): then the server cannot bind and exits,
    and it is started again on another port. Ready means our process answers: its own log says
    it listens on the port, and /health/ready is 200 there."""
    for _ in range(3):
        server = _launch(store, log, **env)
        if _wait_ready(server, timeout):
            return server
    raise AssertionError(f"server could not bind a free port:\n{log.read_text()}")


def _launch(store: Path, log: Path, **env: str) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "promptserve.service.cli", "serve", "--store", str(store)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTSERVE_")}
    environment |= {"HF_HUB_OFFLINE": "1", **LIMITS, **env}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=REPO, env=environment, stdout=sink, stderr=subprocess.STDOUT
        )
    return Server(f"http://127.0.0.1:{port}", process, log)


def _wait_ready(server: Server, timeout: float) -> bool:
    """True once ready; False if it exited because its port was taken; fails otherwise."""
    listening = f"Uvicorn running on {server.url}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            text = server.log.read_text()
            if "address already in use" in text.lower():
                return False
            raise AssertionError(f"server exited with {server.process.returncode}:\n{text}")
        try:
            ready = httpx.get(f"{server.url}/health/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            ready = False
        if ready and listening in server.log.read_text():
            return True
        time.sleep(0.5)
    stop_server(server)
    raise AssertionError(f"server not ready after {timeout}s:\n{server.log.read_text()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def first_start_store(root: Path) -> Path:
    """`root/store` as the first start of `promptserve serve` leaves it (`make serve`): a real
    server on an empty store creates the default zero-shot classifier on mini (exporting it
    takes most of a minute on a loaded 2-core machine), then stops. Its log is
    `root/first-start.log`."""
    store = root / "store"
    stop_server(start_server(store, root / FIRST_START_LOG, timeout=600))
    return store


def copy_store(template: Path, target: Path) -> Path:
    """A private copy of the store `template` at `target`: real copies, never links, so a test
    may publish, delete or corrupt files there without touching the template."""
    shutil.copytree(template, target)
    return target


@pytest.fixture(scope="session")
def mini_template_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store a first start leaves, made once per session (`first_start_store`). Never
    serve it: every end-to-end server runs on a `copy_store` of it (or use `mini_store`)."""
    return first_start_store(tmp_path_factory.mktemp("mini-template"))


@pytest.fixture
def mini_store(mini_template_store: Path, tmp_path: Path) -> Path:
    """This test's own copy of the mini template store, at `tmp_path/store`."""
    return copy_store(mini_template_store, tmp_path / "store")
