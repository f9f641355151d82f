"""Handing decoded images' memory back to the system.

A large image's decode buffers are freed after it is resized, but glibc keeps the freed pages in
each decode thread's malloc arena: eight 25 Mpx PNGs left the server 270 MB larger for good
(bench/attacks.py, ``huge-pixels``). `trim_after` asks glibc to return them (``malloc_trim``)
on the decode thread, after each decode that took long enough to have held megabytes (about
1 ms, against the 230 ms such a decode takes); small images never pay for it. Elsewhere (musl,
macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Callable
from typing import cast

LARGE_DECODE_S = 0.02  # a decode this long held megabytes: its buffers are handed back


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return cast("Callable[[int], int]", trim)


_TRIM = _malloc_trim()
_lock = threading.Lock()  # one trim at a time: each walks every arena


def trim_after(seconds: float) -> None:
    """Return freed heap pages to the system after a decode that took `seconds`, if it was a
    large one (`LARGE_DECODE_S`); small images cost nothing."""
    if _TRIM is None or seconds < LARGE_DECODE_S:
        return
    with _lock:
        _TRIM(0)
