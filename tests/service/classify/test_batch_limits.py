"""The batcher's limits: a batch filled exactly, a request that overfills one, the wait window.

The window is checked on the event loop's clock held still (`HeldClock`), never against the
wall clock: while it is held a window cannot close by itself, so a request that arrives while a
batch is gathering must join it, and the window closes when the test moves the clock past it.
While the clock is held, timed sleeps never end: the tests poll with `eventually(interval=0)`.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

import pytest
import torch
from torch import Tensor

from promptserve.service.classify.batcher import MicroBatcher
from tests.waiting import TIMEOUT_S, eventually

pytestmark = pytest.mark.anyio


class SumEngine:
    """Embeds [B, 3, S, S] as the per-image pixel sums [B, 1]; records each call's batch size."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, pixels: Tensor) -> Tensor:
        self.calls.append(int(pixels.shape[0]))
        return pixels.sum(dim=(1, 2, 3)).unsqueeze(1)


class HeldClock:
    """The running loop's `time()` held at its value on entry; it moves only by `advance`."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.now = self.loop.time()

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def __enter__(self) -> HeldClock:
        self.loop.time = lambda: self.now  # type: ignore[method-assign]
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        del self.loop.time  # the loop's own clock again (it is ahead of the held one)


def images(n: int, value: float) -> Tensor:
    return torch.full((n, 3, 2, 2), value)


def rows(embeddings: Tensor) -> list[float]:
    return embeddings.flatten().tolist()


async def taken(batcher: MicroBatcher, n: int, value: float, engine: SumEngine) -> asyncio.Task:
    """Submit n images as a task and return once the batcher's worker has taken them."""
    submitted: list[bool] = []

    async def submit() -> Tensor:
        submitted.append(True)  # submit() queues the request before its first await
        return await batcher.submit("clf", images(n, value), engine)

    task = asyncio.create_task(submit())
    await eventually(lambda: submitted and batcher.queue_depth == 0, interval=0)
    return task


async def answers(
    batcher: MicroBatcher, engine: SumEngine, *requests: tuple[int, float]
) -> list[list[float]]:
    """Run `batcher` for requests of (images, pixel value) submitted together; their rows."""
    await batcher.start()
    try:
        submitted = (batcher.submit("clf", images(n, value), engine) for n, value in requests)
        results = await asyncio.wait_for(asyncio.gather(*submitted), TIMEOUT_S)
    finally:
        await batcher.stop()
    return [rows(result) for result in results]


async def test_a_batch_filled_exactly_runs_without_waiting_for_the_window() -> None:
    engine = SumEngine()
    # the window is ten minutes: only a full batch is answered within TIMEOUT_S
    batcher = MicroBatcher(max_batch_size=4, max_wait_ms=600_000)
    assert await answers(batcher, engine, (2, 1.0), (2, 2.0)) == [[12.0] * 2, [24.0] * 2]
    assert engine.calls == [4]


async def test_a_request_that_overfills_a_batch_starts_the_next_one_and_is_answered() -> None:
    engine = SumEngine()
    batcher = MicroBatcher(max_batch_size=4, max_wait_ms=0)
    # 3 + 2 images are one over the limit: the second request waits for the next batch
    assert await answers(batcher, engine, (3, 1.0), (2, 2.0)) == [[12.0] * 3, [24.0] * 2]
    assert engine.calls == [3, 2]


async def test_a_request_arriving_within_the_window_joins_the_gathering_batch() -> None:
    engine = SumEngine()
    batcher = MicroBatcher(max_batch_size=4, max_wait_ms=500)
    await batcher.start()
    try:
        with HeldClock() as clock:
            first = await taken(batcher, 1, 1.0, engine)  # the batch gathers: 1 of 4 images
            assert engine.calls == []
            second = asyncio.create_task(batcher.submit("clf", images(3, 2.0), engine))
            await eventually(lambda: first.done() and second.done(), interval=0)
            assert engine.calls == [4]  # joined, and full: it ran without the window closing
            # a lone request runs once the clock reaches the end of its window
            third = await taken(batcher, 1, 3.0, engine)
            clock.advance(0.5)
            await eventually(third.done, interval=0)
    finally:
        await batcher.stop()
    assert engine.calls == [4, 1]
    assert rows(first.result()) == [12.0]
    assert rows(second.result()) == [24.0] * 3
    assert rows(third.result()) == [36.0]


async def test_without_a_window_requests_already_waiting_still_share_a_batch() -> None:
    engine = SumEngine()
    batcher = MicroBatcher(max_batch_size=4, max_wait_ms=0)
    with HeldClock():  # the window ends the instant it starts: no time left, not less
        assert await answers(batcher, engine, (1, 1.0), (1, 2.0)) == [[12.0], [24.0]]
    assert engine.calls == [2]
