"""The frames API workers and the engine process exchange over a Unix socket.

A frame is ``[header length][payload length]`` (two big-endian uint32) then a JSON header and
raw bytes: for a classify call the payload is the pixels ``[n, 3, S, S]`` float32 in C order,
so a 224 px image costs one 600 KB copy and no encoding. Every request header carries an ``id``
the reply repeats, so one connection carries many requests at once (the engine answers them as
its batches finish, in any order). Errors travel as ``{status, code, message, headers}`` and are
raised again in the worker as a `ServiceError` of that status: a 4xx stays a 4xx.
"""

from __future__ import annotations

import asyncio
import functools
import struct
from typing import Any

import numpy as np
import orjson
import torch
from torch import Tensor

from promptserve.service.errors import ServiceError, http_meaning

LENGTHS = struct.Struct("!II")
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_PAYLOAD_BYTES = 1024 * 1024 * 1024

Header = dict[str, Any]


def encode_frame(header: Header, payload: bytes = b"") -> bytes:
    head = orjson.dumps(header)
    return LENGTHS.pack(len(head), len(payload)) + head + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[Header, bytes]:
    """The next frame; `asyncio.IncompleteReadError` when the peer has closed."""
    head_size, payload_size = LENGTHS.unpack(await reader.readexactly(LENGTHS.size))
    if head_size > MAX_HEADER_BYTES or payload_size > MAX_PAYLOAD_BYTES:
        raise ValueError(f"frame of {head_size} + {payload_size} bytes is over the limits")
    header = orjson.loads(await reader.readexactly(head_size))
    payload = await reader.readexactly(payload_size) if payload_size else b""
    if not isinstance(header, dict):
        raise ValueError("a frame header must be a JSON object")
    return header, payload


def pixels_to_bytes(pixels: Tensor) -> tuple[list[int], bytes]:
    """[n, 3, S, S] -> (shape, float32 bytes)."""
    array = pixels.detach().to("cpu", torch.float32).contiguous().numpy()
    return list(array.shape), array.tobytes()


def pixels_from_bytes(shape: list[int], data: bytes) -> Tensor:
    """The inverse of `pixels_to_bytes`; a ValueError when the sizes disagree."""
    if len(shape) != 4 or any(not isinstance(n, int) or n < 1 for n in shape):
        raise ValueError(f"pixels need a shape [n, 3, S, S], got {shape!r}")
    array = np.frombuffer(data, dtype=np.float32)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{len(data)} bytes of pixels do not fill the shape {shape}")
    return torch.from_numpy(array.reshape(shape).copy())


def error_header(exc: Exception) -> Header:
    """How an exception raised in the engine reaches the API worker (and its client)."""
    if isinstance(exc, ServiceError):
        return {
            "status": exc.status,
            "code": exc.code,
            "message": exc.message,
            "headers": exc.headers,
        }
    meaning = http_meaning(exc)
    if meaning is not None:  # the model package's user-facing errors (unknown label, ...)
        status, code = meaning
        return {"status": status, "code": code, "message": str(exc), "headers": None}
    # internals (paths, tracebacks) stay in the engine's log
    message = f"{type(exc).__name__} in the engine process; see the server log"
    return {"status": 500, "code": "internal_error", "message": message, "headers": None}


def raise_error(error: Header) -> None:
    """Raise the `ServiceError` an `error_header` describes."""
    kind = error_class(int(error["status"]), str(error["code"]))
    raise kind(str(error["message"]), headers=error.get("headers"))


@functools.cache
def error_class(status: int, code: str) -> type[ServiceError]:
    """A `ServiceError` subclass with this status and code (one per pair, made once)."""
    return type("EngineReplyError", (ServiceError,), {"status": status, "code": code})
