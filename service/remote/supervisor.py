"""``serve --workers N``: the engine process, then N uvicorn API workers sharing the port.

    supervisor (this process: uvicorn's process manager)
    ├── engine process      Runtime: engines (one copy of the weights), labels, batcher, jobs
    └── API worker × N      HTTP, bodies, image decoding; pixels to the engine over a socket

The engine is started first (spawned: CUDA does not survive fork) and listens on a Unix socket
in a private temporary folder; the workers get the settings and the socket path through
`WORKER_SETTINGS_ENV`. If the engine process dies, the supervisor stops the workers and exits
with an error, so an orchestrator restarts the whole service.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from multiprocessing.process import BaseProcess
from pathlib import Path

from promptserve.service.connections import server_options
from promptserve.service.remote.engine import run_engine
from promptserve.service.remote.worker import WORKER_SETTINGS_ENV, dump_settings
from promptserve.service.settings import Settings

log = logging.getLogger(__name__)

ENGINE_START_S = 120.0  # how long the engine process may take to listen
STOP_WAIT_S = 30.0
WORKER_HEALTHCHECK_S = 60


def serve_workers(settings: Settings) -> int:
    """Run the service with `settings.workers` API workers; returns the exit code."""
    import uvicorn

    run_dir = Path(tempfile.mkdtemp(prefix="promptserve-"))  # mode 0700: this user only
    socket_path = run_dir / "engine.sock"
    context = multiprocessing.get_context("spawn")
    engine = context.Process(
        target=run_engine, args=(settings, str(socket_path)), name="promptserve-engine"
    )
    engine.start()
    stopping = threading.Event()
    try:
        wait_for_engine(socket_path, engine)
        worker_settings = settings.model_copy(update={"engine_socket": socket_path})
        os.environ[WORKER_SETTINGS_ENV] = dump_settings(worker_settings)
        threading.Thread(target=_watch, args=(engine, stopping), daemon=True).start()
        log.info("engine process %s up; starting %d API workers", engine.pid, settings.workers)
        uvicorn.run(
            "promptserve.service.app:create_worker_app",
            factory=True,
            workers=settings.workers,
            # a spawned worker imports torch before it can answer uvicorn's pings: seconds on a
            # busy host, where the default of 5 s had workers killed and restarted in a loop
            timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
            **server_options(settings),  # each worker's connection limits and shutdown timeout
        )
    finally:
        stopping.set()
        _stop(engine)
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0 if engine.exitcode in (0, -signal.SIGTERM) else 1


def wait_for_engine(socket_path: Path, engine: BaseProcess) -> None:
    """Return once the engine accepts connections; RuntimeError if it exits or takes too long."""
    deadline = time.monotonic() + ENGINE_START_S
    while time.monotonic() < deadline:
        if not engine.is_alive():
            raise RuntimeError(f"the engine process exited during start-up ({engine.exitcode})")
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
            probe.connect(str(socket_path))
            return
        time.sleep(0.05)
    raise RuntimeError(f"the engine process did not listen within {ENGINE_START_S:.0f} s")


def _watch(engine: BaseProcess, stopping: threading.Event) -> None:
    engine.join()
    if not stopping.is_set():
        log.error("the engine process exited (%s): stopping the API workers", engine.exitcode)
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's manager stops the workers and returns


def _stop(engine: BaseProcess) -> None:
    if engine.is_alive():
        engine.terminate()
        engine.join(STOP_WAIT_S)
    if engine.is_alive():
        engine.kill()
        engine.join()
