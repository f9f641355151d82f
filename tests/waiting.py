"""Waiting on state, never on the clock: poll a condition until it holds or a deadline passes.

The deadlines are generous (a shared 2-core machine can stall a thread for seconds); a test that
needs a latency bound compares against a baseline it measures itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

TIMEOUT_S = 60.0


def wait_until(
    probe: Callable[[], T], *, timeout: float = TIMEOUT_S, interval: float = 0.05, what: str = ""
) -> T:
    """Call `probe` until it returns something truthy, and return that; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s: {what or probe}")
        time.sleep(interval)


async def eventually(
    probe: Callable[[], T], *, timeout: float = TIMEOUT_S, interval: float = 0.01, what: str = ""
) -> T:
    """`wait_until` for a test running on the event loop: the loop keeps running meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s: {what or probe}")
        await asyncio.sleep(interval)
