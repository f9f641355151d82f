"""Handing decoded images' memory back to the system.

A large image's decode buffers are freed after it is resized, but glibc keeps the freed pages in
each decode thread's malloc arena: eight 25 Mpx PNGs left the server 270 MB larger for good
(bench/attacks.py, ``huge-pixels``). `trim_soon` asks glibc to return them (``malloc_trim``),
at most once every `TRIM_EVERY_S` seconds, on the decode thread that calls it: about 1 ms when
there is little to give back. Elsewhere (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from collections.abc import Callable
from typing import cast

TRIM_EVERY_S = 1.0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return cast("Callable[[int], int]", trim)


_TRIM = _malloc_trim()
_lock = threading.Lock()
_last = 0.0


def trim_soon() -> None:
    """Return freed heap pages to the system, unless that was done under a second ago (or
    another thread is doing it now)."""
    global _last
    if _TRIM is None or time.monotonic() - _last < TRIM_EVERY_S:
        return
    if not _lock.acquire(blocking=False):
        return
    try:
        _TRIM(0)
        _last = time.monotonic()
    finally:
        _lock.release()
