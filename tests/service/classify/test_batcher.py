"""The micro-batcher on its own, LitServe-style: a fixed fake engine that records its calls."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch
from torch import Tensor

from promptserve.service.classify.batcher import MicroBatcher
from promptserve.service.errors import EngineError, NotReadyError, QueueFullError
from tests.waiting import eventually

pytestmark = pytest.mark.anyio


class FakeEngine:
    """Embeds a [B, 3, S, S] batch as its per-image pixel sums [B, 1]; records batch sizes."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.delay = delay
        self.fail = fail
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()  # set once a batch is inside the engine

    def __call__(self, pixels: Tensor) -> Tensor:
        self.entered.set()
        self.release.wait(timeout=60)
        self.calls.append(int(pixels.shape[0]))
        if self.fail:
            raise RuntimeError("engine exploded")
        return pixels.sum(dim=(1, 2, 3)).unsqueeze(1)


def pixels(n: int, value: float) -> Tensor:
    return torch.full((n, 3, 2, 2), value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_batch_size": 0},
        {"max_batch_size": 2.5},
        {"max_wait_ms": -1},
        {"max_wait_ms": float("inf")},
        {"max_wait_ms": float("nan")},
        {"queue_size": 0},
    ],
)
async def test_constructor_validates(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        MicroBatcher(**kwargs)  # type: ignore[arg-type]


async def test_two_concurrent_requests_run_as_one_batch() -> None:
    engine = FakeEngine()
    sizes: list[int] = []
    batcher = MicroBatcher(max_batch_size=8, max_wait_ms=200, on_batch=sizes.append)
    await batcher.start()
    try:
        first, second = await asyncio.gather(
            batcher.submit("clf", pixels(1, 1.0), engine),
            batcher.submit("clf", pixels(2, 2.0), engine),
        )
    finally:
        await batcher.stop()
    assert engine.calls == [3]
    assert batcher.batches_run == 1
    assert sizes == [3]
    # each request gets back exactly its own rows
    assert first.flatten().tolist() == [12.0]
    assert second.flatten().tolist() == [24.0, 24.0]


async def test_by_default_a_batch_is_what_queued_while_the_engine_was_busy() -> None:
    engine = FakeEngine()
    engine.release.clear()
    sizes: list[int] = []
    batcher = MicroBatcher(max_batch_size=8, on_batch=sizes.append)  # the default: no wait
    await batcher.start()
    try:
        # an idle engine takes a lone request at once: no window for others to join
        first = asyncio.create_task(batcher.submit("clf", pixels(1, 1.0), engine))
        for _ in range(5):
            await asyncio.sleep(0)  # turns of the loop, no time: a window would still be open
        # these queue while the engine is busy, and run together when it is free
        later = [asyncio.create_task(batcher.submit("clf", pixels(1, 2.0), engine)) for _ in "abc"]
        await eventually(lambda: batcher.queue_depth == 3)
        engine.release.set()
        results = await asyncio.wait_for(asyncio.gather(first, *later), timeout=5)
    finally:
        await batcher.stop()
    assert sizes == [1, 3]
    assert [r.item() for r in results] == [12.0, 24.0, 24.0, 24.0]


async def test_full_batch_does_not_wait_and_big_requests_are_chunked() -> None:
    engine = FakeEngine()
    batcher = MicroBatcher(max_batch_size=4, max_wait_ms=5_000)
    await batcher.start()
    try:
        out = await asyncio.wait_for(batcher.submit("clf", pixels(10, 1.0), engine), timeout=5)
    finally:
        await batcher.stop()
    assert engine.calls == [4, 4, 2]  # max_batch_size reached: no 5 s wait
    assert out.shape == (10, 1)


async def test_requests_are_grouped_by_key() -> None:
    a, b = FakeEngine(), FakeEngine()
    batcher = MicroBatcher(max_batch_size=8, max_wait_ms=200)
    await batcher.start()
    try:
        results = await asyncio.gather(
            batcher.submit("a", pixels(1, 1.0), a),
            batcher.submit("b", pixels(1, 2.0), b),
            batcher.submit("a", pixels(1, 3.0), a),
        )
    finally:
        await batcher.stop()
    assert a.calls == [2]
    assert b.calls == [1]
    assert [r.item() for r in results] == [12.0, 24.0, 36.0]


async def test_queue_full_is_refused_and_the_batcher_recovers() -> None:
    engine = FakeEngine()
    engine.release.clear()  # hold the engine so requests pile up
    batcher = MicroBatcher(max_batch_size=2, max_wait_ms=0, queue_size=3)
    await batcher.start()
    try:
        running = asyncio.create_task(batcher.submit("clf", pixels(2, 1.0), engine))
        await eventually(engine.entered.is_set)  # the worker took it and blocks in the engine
        waiting = asyncio.create_task(batcher.submit("clf", pixels(3, 1.0), engine))
        await eventually(lambda: batcher.queue_depth == 3)
        with pytest.raises(QueueFullError):
            await batcher.submit("clf", pixels(1, 1.0), engine)
        engine.release.set()
        await asyncio.wait_for(asyncio.gather(running, waiting), timeout=5)
        assert batcher.queue_depth == 0
        ok = await batcher.submit("clf", pixels(1, 1.0), engine)
    finally:
        await batcher.stop()
    assert ok.shape == (1, 1)


async def test_engine_failure_fails_the_batch_not_the_worker() -> None:
    batcher = MicroBatcher(max_batch_size=4, max_wait_ms=0)
    await batcher.start()
    try:
        with pytest.raises(EngineError, match="RuntimeError"):
            await batcher.submit("bad", pixels(1, 1.0), FakeEngine(fail=True))
        good = await batcher.submit("good", pixels(1, 1.0), FakeEngine())
    finally:
        await batcher.stop()
    assert good.item() == 12.0


async def test_submit_needs_a_running_batcher() -> None:
    batcher = MicroBatcher()
    with pytest.raises(NotReadyError):
        await batcher.submit("clf", pixels(1, 1.0), FakeEngine())


async def test_stop_fails_every_request_not_answered_yet() -> None:
    engine = FakeEngine()
    engine.release.clear()  # the first batch holds the engine; the others wait behind it
    batcher = MicroBatcher(max_batch_size=3, max_wait_ms=0)
    await batcher.start()
    running = asyncio.create_task(batcher.submit("clf", pixels(2, 1.0), engine))
    await eventually(engine.entered.is_set)
    waiting = [asyncio.create_task(batcher.submit("clf", pixels(2, 1.0), engine)) for _ in "ab"]
    await eventually(lambda: batcher.queue_depth == 4)
    stopping = asyncio.create_task(batcher.stop())
    # answered while the engine still holds the first batch: nobody waits on a stopped service
    await eventually(lambda: running.done() and all(task.done() for task in waiting))
    engine.release.set()
    await stopping
    for task in [running, *waiting]:  # inside the engine, carried over, still queued
        with pytest.raises(NotReadyError, match="shutting down"):
            task.result()
    assert batcher.queue_depth == 0


async def test_stop_fails_a_batch_that_is_still_gathering() -> None:
    engine = FakeEngine()
    batcher = MicroBatcher(max_batch_size=8, max_wait_ms=60_000)  # the window never closes
    await batcher.start()
    submitted: list[bool] = []

    async def submit() -> Tensor:
        submitted.append(True)  # submit() queues the request before its first await
        return await batcher.submit("clf", pixels(1, 1.0), engine)

    gathering = asyncio.create_task(submit())
    await eventually(lambda: submitted and batcher.queue_depth == 0)  # taken; waits for more
    await batcher.stop()
    with pytest.raises(NotReadyError, match="shutting down"):
        await asyncio.wait_for(gathering, 5)
    assert engine.calls == []


async def test_the_queue_bound_counts_every_waiting_request() -> None:
    engine = FakeEngine()
    engine.release.clear()
    batcher = MicroBatcher(max_batch_size=2, max_wait_ms=0, queue_size=4)
    await batcher.start()
    try:
        running = asyncio.create_task(batcher.submit("clf", pixels(2, 1.0), engine))
        await eventually(engine.entered.is_set)
        waiting = [asyncio.create_task(batcher.submit("clf", pixels(2, 1.0), engine)) for _ in "ab"]
        await eventually(lambda: batcher.queue_depth == 4)  # 2 + 2, not the last one's 2
        with pytest.raises(QueueFullError, match="4 images waiting"):
            await batcher.submit("clf", pixels(1, 1.0), engine)
        engine.release.set()
        await asyncio.wait_for(asyncio.gather(running, *waiting), timeout=5)
    finally:
        await batcher.stop()


async def test_a_batch_of_one_image_at_a_time() -> None:
    engine = FakeEngine()
    batcher = MicroBatcher(max_batch_size=1, max_wait_ms=0, queue_size=1)
    await batcher.start()
    try:
        first = await batcher.submit("clf", pixels(1, 1.0), engine)
        second = await batcher.submit("clf", pixels(1, 2.0), engine)
    finally:
        await batcher.stop()
    assert engine.calls == [1, 1]
    assert (first.item(), second.item()) == (12.0, 24.0)


async def test_a_failing_engine_fails_its_own_requests_only() -> None:
    good = FakeEngine()
    batcher = MicroBatcher(max_batch_size=8, max_wait_ms=200)
    await batcher.start()
    try:
        results = await asyncio.gather(
            batcher.submit("bad", pixels(1, 1.0), FakeEngine(fail=True)),
            batcher.submit("good", pixels(1, 1.0), good),
            batcher.submit("good", pixels(2, 2.0), good),
            batcher.submit("good", pixels(1, 3.0), good),
            return_exceptions=True,
        )
    finally:
        await batcher.stop()
    assert isinstance(results[0], EngineError)
    assert good.calls == [4]
    assert [r.flatten().tolist() for r in results[1:]] == [[12.0], [24.0, 24.0], [36.0]]
    assert (batcher.batches_run, batcher.images_run) == (1, 4)
