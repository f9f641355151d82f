"""The engine process of ``serve --workers N``: one `Runtime` whose `LocalEngine` (the engines
with the one copy of the weights, label encoding, the micro-batcher) and job runner serve the
API workers behind a Unix socket.

API workers send it checked score requests with uint8 pixels; each call is answered when its
batch has run, so requests from every worker meet in the same batches. Calls (their messages
are encoded and decoded in `service.remote.protocol`):

Every call made for an HTTP request names its ``request_id``; the engine logs the lines it
writes while answering under that id.

  score      a `ScoreRequest` {targets, top_k, shape}, payload uint8 pixels
             -> {results: [one `ClassifyResult` per target]}
  embed      an `EmbedRequest` {classifier, version, labels[, shape]}, payload uint8 pixels
             (images) or none (labels) -> {embeddings: [[float, ...], ...]}
  status     -> {state, message, loaded}: "ready", or "starting" / "failed" with the 503's
             message; the classifier versions loaded (for GET /classifiers/{name})
  report     header {worker, http}: a worker's HTTP metric families (`Metrics.http_state`,
             every second; kept per worker and summed into every exposition)
  metrics    a report, answered with the whole service's Prometheus text {text}
  wake       a job was submitted or cancelled: poll the job store now
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

from promptserve.service.errors import NotReadyError
from promptserve.service.logs import bound, configure_logging, note_served
from promptserve.service.metrics import State
from promptserve.service.public_errors import log_failure, public_error
from promptserve.service.remote.protocol import (
    Header,
    decode_embed,
    decode_score,
    encode_embeddings,
    encode_error,
    encode_frame,
    encode_results,
    read_frame,
)
from promptserve.service.runtime import Runtime
from promptserve.service.settings import Settings
from promptserve.service.tracing import configure as configure_tracing
from promptserve.service.tracing import continued

log = logging.getLogger(__name__)

PARENT_CHECK_S = 1.0


class EngineServer:
    def __init__(self, runtime: Runtime) -> None:
        if runtime.local is None:
            raise ValueError("the engine process serves a runtime that runs the engine")
        self.runtime = runtime
        self.engine = runtime.local
        self.http_states: dict[str, State] = {}  # worker id -> its HTTP metric families
        metrics = self.runtime.metrics
        metrics.worker_states = lambda: list(self.http_states.values())
        metrics.add_gauge(
            "promptserve_api_workers",
            "API worker processes that have reported their metrics.",
            lambda: len(self.http_states),
        )
        metrics.read_at_scrape.add(
            "promptserve_api_worker_requests_total",
            "HTTP requests answered, per API worker process (as of its last report).",
            "counter",
            self._served_per_worker,
        )
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One worker's connection: requests are answered concurrently, replies by id."""
        try:
            while True:
                header, payload = await read_frame(reader)
                task = asyncio.create_task(self._answer(header, payload, writer))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the worker went away
        except ValueError:
            log.exception("malformed frame from an API worker; dropping its connection")
        finally:
            writer.close()

    async def _answer(self, header: Header, payload: bytes, writer: asyncio.StreamWriter) -> None:
        reply: Header
        request_id = header.get("request_id")  # the HTTP request this call is for, if any
        with bound(request_id if isinstance(request_id, str) else None):
            try:
                with continued(header.get("traceparent")):
                    reply = await self._call(header, payload)
            except Exception as exc:  # every failure goes back to the worker as an error reply
                log_failure(f"engine call {header.get('op')}", exc, public_error(exc))
                reply = {"error": encode_error(exc)}
        reply["id"] = header.get("id")
        if not writer.is_closing():
            writer.write(encode_frame(reply))
            with contextlib.suppress(ConnectionError):
                await writer.drain()

    async def _call(self, header: Header, payload: bytes) -> Header:
        op = header.get("op")
        if op == "score":
            request, pixels = decode_score(header, payload)
            targets = request.targets
            note_served(
                ",".join(t.classifier for t in targets), ",".join(t.version for t in targets)
            )
            log.debug("scoring %d image(s)", pixels.shape[0])
            return encode_results(await self.engine.score(request, pixels))
        if op == "embed":
            embed_request, embed_pixels = decode_embed(header, payload)
            return encode_embeddings(await self.engine.embed(embed_request, embed_pixels))
        if op == "status":
            loaded = self.engine.loaded()
            try:
                self.engine.check_ready()
            except NotReadyError as exc:
                return {"state": self.engine.state, "message": exc.message, "loaded": loaded}
            return {"state": "ready", "message": "", "loaded": loaded}
        if op in ("report", "metrics"):
            self.http_states[str(header["worker"])] = header["http"]
            if op == "report":
                return {}
            return {"text": await asyncio.to_thread(self.runtime.metrics.expose)}
        if op == "wake":
            self.runtime.job_client.wake()
            return {}
        raise ValueError(f"unknown engine call {op!r}")

    def _served_per_worker(self) -> list[tuple[dict[str, str], float]]:
        """Each worker's request count (is the load spread over the workers?)."""
        served: list[tuple[dict[str, str], float]] = []
        for worker, state in sorted(self.http_states.items()):
            total = sum(
                value
                for name, _, _, samples in state
                if name == "promptserve_http_requests"
                for _, _, value in samples
            )
            served.append(({"worker": worker}, total))
        return served


async def serve_engine(settings: Settings, socket_path: Path) -> None:
    """Run the engine on `socket_path` until SIGTERM or SIGINT."""
    runtime = Runtime(settings)
    engine = EngineServer(runtime)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await runtime.start()
    server = await asyncio.start_unix_server(engine.handle, path=str(socket_path))
    os.chmod(socket_path, 0o600)  # the API workers run as this user; nobody else
    log.info("engine process %d serving %s on %s", os.getpid(), socket_path, runtime.device)
    orphaned = asyncio.create_task(_watch_parent(stop), name="watch-parent")
    try:
        await stop.wait()
    finally:
        orphaned.cancel()
        server.close()
        await runtime.stop()


async def _watch_parent(stop: asyncio.Event) -> None:
    """Stop when the supervisor is gone (killed without a chance to stop this process)."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(PARENT_CHECK_S)
    log.error("the supervisor process %d is gone: stopping the engine", parent)
    stop.set()


def run_engine(settings: Settings, socket_path: str) -> None:
    """The engine process's entry point (started with `spawn`)."""
    configure_logging(settings.log_level, settings.log_format)
    configure_tracing("engine")
    runner_kwargs: dict[str, Any] = {}
    with contextlib.suppress(ImportError):
        import uvloop

        runner_kwargs["loop_factory"] = uvloop.new_event_loop
    with asyncio.Runner(**runner_kwargs) as runner:
        runner.run(serve_engine(settings, Path(socket_path)))
