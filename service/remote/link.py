"""An API worker's connection to the engine process: one Unix socket, many calls in flight.

Calls are multiplexed by id and answered in whatever order the engine's batches finish. If the
engine goes away, the calls in flight fail with a 503 and the next call connects again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from pathlib import Path

from promptserve.service.errors import NotReadyError
from promptserve.service.logs import current_request_id
from promptserve.service.remote.protocol import Header, encode_frame, raise_error, read_frame
from promptserve.service.tracing import current_traceparent

log = logging.getLogger(__name__)


class EngineLink:
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Header]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()

    async def call(self, header: Header, payload: bytes = b"") -> Header:
        """Send one call and wait for its reply; an error reply is raised as its ServiceError.
        A call made for a request names its id (the engine logs its lines under it)."""
        writer = await self._connected()
        call_id = next(self._ids)
        future: asyncio.Future[Header] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        request_id = current_request_id()
        if request_id is not None:
            header = {**header, "request_id": request_id}
        try:
            traceparent = current_traceparent()  # the engine's spans join this trace
            if traceparent is not None:
                header = {**header, "traceparent": traceparent}
            writer.write(encode_frame({**header, "id": call_id}, payload))
            await writer.drain()
            reply = await future
        except ConnectionError:
            raise _unavailable() from None
        finally:
            self._pending.pop(call_id, None)
        if "error" in reply:
            raise_error(reply["error"])
        return reply

    async def _connected(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is None or self._writer.is_closing():
                try:
                    reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
                except OSError as exc:
                    log.warning("cannot reach the engine process at %s: %s", self.socket_path, exc)
                    raise _unavailable() from None
                self._writer = writer
                self._reader_task = asyncio.create_task(self._read(reader), name="engine-link")
            return self._writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                reply, _ = await read_frame(reader)
                future = self._pending.get(reply.get("id", -1))
                if future is not None and not future.done():
                    future.set_result(reply)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            log.warning("lost the engine process connection: %s", type(exc).__name__)
        finally:
            if self._writer is not None:
                self._writer.close()
            self._writer = None
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(_unavailable())

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _unavailable() -> NotReadyError:
    return NotReadyError("the engine process is not available; retry shortly")
