"""Cross-request micro-batching: many requests' images, one engine call.

Requests submit preprocessed pixels [n, 3, S, S] with a key (the engine they run on, see
below) and the engine to run. One worker task takes the first waiting request, then keeps
collecting until `max_batch_size` images are gathered or `max_wait_ms` has passed, groups
what it collected by key, and runs each group as one engine call in a single worker thread (so
the event loop keeps accepting and decoding while the engine works, and the engine sees one
call at a time). While a batch runs, new requests queue up and form the next batch at once:
under load the batches fill without waiting. So the default wait is 0 (Triton's dynamic
batcher's default too): a batch is what queued while the engine was busy, and an idle engine
starts on a lone request at once; a window of a few ms only held the engine idle while the
event loop was still answering the previous batch (docs/performance.md, "Against the naive
server"). A request larger than `max_batch_size` runs in chunks.

A key names an engine, not a classifier: requests of different classifiers that run on one
shared engine form one call. A request may bring per-sample `inputs` ({name: [n, ...]}, its
classifier's tensors for a shared prompt graph); they are concatenated along the batch like the
pixels and passed to `run` beside them, so each image meets its own classifier's tensors.

The queue is bounded in images (`queue_size`): a request that would overflow it fails at once
with `QueueFullError` (HTTP 429) instead of waiting without bound. No web framework is imported
here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from promptserve.service import tracing
from promptserve.service.errors import EngineError, NotReadyError, QueueFullError

log = logging.getLogger(__name__)

Run = Callable[[Tensor], Tensor]  # pixels [B, 3, S, S] -> embeddings [B, D]
RunWithInputs = Callable[[Tensor, dict[str, Tensor]], Tensor]  # pixels, {name: [B, ...]}


@dataclass
class _Request:
    key: Hashable
    pixels: Tensor  # [n, 3, S, S]
    run: Run | RunWithInputs
    future: asyncio.Future[Tensor]
    inputs: dict[str, Tensor] | None = None  # {name: [n, ...]}
    # for its trace (epoch ns): queued, its engine call's start and end; the call's images
    queued_ns: int = 0
    started_ns: int = 0
    ended_ns: int = 0
    batch_images: int = 0

    @property
    def size(self) -> int:
        return int(self.pixels.shape[0])


class MicroBatcher:
    """Groups concurrent `submit` calls into engine batches; see the module docstring."""

    def __init__(
        self,
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 0.0,
        queue_size: int = 512,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
        if not isinstance(max_wait_ms, int | float) or not 0 <= max_wait_ms < math.inf:
            raise ValueError(f"max_wait_ms must be a finite number >= 0, got {max_wait_ms!r}")
        if not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size must be a positive integer, got {queue_size!r}")
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.on_batch = on_batch
        self.batches_run = 0  # engine calls made
        self.images_run = 0
        self._queue: asyncio.Queue[_Request] | None = None
        self._carry: _Request | None = None  # collected but did not fit the previous batch
        self._batch: list[_Request] = []  # taken by the worker: gathering or in the engine
        self._waiting = 0  # images submitted and not yet taken into a batch
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def queue_depth(self) -> int:
        """Images waiting for the engine."""
        return self._waiting

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    async def start(self) -> None:
        if self.running:
            return
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._worker = asyncio.create_task(self._work(), name="micro-batcher")

    async def stop(self) -> None:
        """Stop the worker; every request not answered yet fails with `NotReadyError`: those
        waiting, the one carried over, and the batch being gathered or inside the engine (its
        engine call finishes in the executor, but its answer is not awaited)."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        leftovers = [*self._batch, *([self._carry] if self._carry is not None else [])]
        self._batch = []
        while self._queue is not None and not self._queue.empty():
            leftovers.append(self._queue.get_nowait())
        self._carry, self._waiting = None, 0
        for request in leftovers:
            _fail(request, NotReadyError("the service is shutting down"))
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
            self._executor = None

    async def submit(
        self,
        key: Hashable,
        pixels: Tensor,
        run: Run | RunWithInputs,
        inputs: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """Embed `pixels` [n, 3, S, S] with `run`, batched with other requests of `key`;
        with `inputs` ({name: [n, ...]}) `run` is called as ``run(pixels, inputs)``."""
        if self._queue is None or not self.running:
            raise NotReadyError("the batcher is not running")
        n = int(pixels.shape[0])
        if n == 0:
            return torch.empty(0)
        if self._waiting + n > self.queue_size:
            raise QueueFullError(
                f"the inference queue is full ({self._waiting} images waiting); retry shortly",
                headers={"Retry-After": "1"},
            )
        future: asyncio.Future[Tensor] = asyncio.get_running_loop().create_future()
        self._waiting += n
        request = _Request(key, pixels, run, future, inputs, queued_ns=time.time_ns())
        self._queue.put_nowait(request)
        try:
            return await future
        finally:
            _trace(request)

    async def _work(self) -> None:
        while True:
            batch = await self._collect()
            try:
                await self._execute(batch)
            except Exception as exc:  # the worker must survive anything a batch does
                log.exception("batch of %d requests failed", len(batch))
                for request in batch:
                    _fail(request, _engine_error(exc))
            self._batch = []

    async def _collect(self) -> list[_Request]:
        """The next batch: the first waiting request, then more until full or timed out."""
        assert self._queue is not None
        first = self._carry if self._carry is not None else await self._queue.get()
        self._carry = None
        batch = self._batch = [self._take(first)]  # `stop` fails them if it comes first
        size = first.size
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while size < self.max_batch_size:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                if remaining <= 0:
                    request = self._queue.get_nowait()
                else:
                    request = await asyncio.wait_for(self._queue.get(), remaining)
            except (TimeoutError, asyncio.QueueEmpty):
                break
            if size + request.size > self.max_batch_size:
                self._carry = request  # starts the next batch; still counted as waiting
                break
            batch.append(self._take(request))
            size += request.size
        return [r for r in batch if not r.future.done()]  # drop requests whose client left

    def _take(self, request: _Request) -> _Request:
        self._waiting -= request.size
        return request

    async def _execute(self, batch: list[_Request]) -> None:
        groups: dict[Hashable, list[_Request]] = {}
        for request in batch:
            groups.setdefault(request.key, []).append(request)
        for group in groups.values():
            try:
                embeddings = await self._run_group(group)
            except Exception as exc:
                log.exception("engine call for %s failed", group[0].key)
                for request in group:
                    _fail(request, _engine_error(exc))
                continue
            offset = 0
            for request in group:
                if not request.future.done():
                    request.future.set_result(embeddings[offset : offset + request.size])
                offset += request.size

    async def _run_group(self, group: list[_Request]) -> Tensor:
        """One engine call per `max_batch_size` chunk of the group's images -> [N, D]."""
        pixels = torch.cat([r.pixels for r in group]) if len(group) > 1 else group[0].pixels
        inputs = _concat_inputs(group)
        loop = asyncio.get_running_loop()
        outputs = []
        started = time.time_ns()
        for start, chunk in zip(
            range(0, len(pixels), self.max_batch_size),
            pixels.split(self.max_batch_size),
            strict=True,
        ):
            args: tuple[Tensor] | tuple[Tensor, dict[str, Tensor]] = (chunk,)
            if inputs is not None:
                end = start + int(chunk.shape[0])
                args = (chunk, {name: t[start:end] for name, t in inputs.items()})
            outputs.append(await loop.run_in_executor(self._executor, group[0].run, *args))
            self.batches_run += 1
            self.images_run += int(chunk.shape[0])
            if self.on_batch is not None:
                self.on_batch(int(chunk.shape[0]))
        ended = time.time_ns()
        for request in group:
            request.started_ns, request.ended_ns, request.batch_images = started, ended, len(pixels)
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


def _concat_inputs(group: list[_Request]) -> dict[str, Tensor] | None:
    """The group's per-sample inputs along the batch, in request order; None without any."""
    if group[0].inputs is None:
        return None
    if any(r.inputs is None or r.inputs.keys() != group[0].inputs.keys() for r in group):
        raise ValueError("requests sharing an engine must bring the same inputs")
    names = list(group[0].inputs)
    return {
        name: torch.cat([r.inputs[name] for r in group if r.inputs is not None]) for name in names
    }


def _trace(request: _Request) -> None:
    """The request's `batch_wait` (queued until its engine call began) and `engine_call`
    spans, recorded in the submitting request's own trace (the worker task has none)."""
    if not tracing.enabled() or not request.started_ns:
        return
    tracing.record("batch_wait", request.queued_ns, request.started_ns)
    attributes = {
        "promptserve.batch.images": request.batch_images,
        "promptserve.images": request.size,
    }
    tracing.record("engine_call", request.started_ns, request.ended_ns, attributes)


def _engine_error(exc: Exception) -> EngineError:
    # the exception itself is logged; clients get its type only (no internals, no paths)
    return EngineError(f"inference failed ({type(exc).__name__}); see the server log")


def _fail(request: _Request, error: Exception) -> None:
    if not request.future.done():
        request.future.set_exception(error)
