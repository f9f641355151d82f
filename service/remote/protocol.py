"""The messages API workers and the engine process exchange over a Unix socket, encoded and
decoded side by side.

A frame is ``[header length][payload length]`` (two big-endian uint32) then a JSON header and
raw bytes. A score call (`encode_score`) carries the `ScoreRequest` in the header and the
pixels ``[n, 3, S, S]`` as uint8 in C order in the payload: a 224 px image costs one 150 KB
copy and no encoding; the engine normalises them. Every request header carries an ``id`` the
reply repeats, so one connection carries many requests at once (the engine answers them as
its batches finish, in any order). An error travels as its public answer
(`service.public_errors.public_error`) and is raised again in the worker as a `ForwardedError` with
that status, code and message: the client reads the same body in both process modes.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import numpy as np
import orjson
import torch
from torch import Tensor

from promptserve.models.classifier import LabelRequest, Prediction
from promptserve.service.classify.scoring import (
    ClassifyResult,
    EmbedRequest,
    ScoreRequest,
    ScoreTarget,
)
from promptserve.service.public_errors import ForwardedError, PublicError, public_error

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


# --- score: request and results ---------------------------------------------------------------


def encode_score(request: ScoreRequest, pixels: Tensor) -> tuple[Header, bytes]:
    """A score call: the request in the header, uint8 pixels [n, 3, S, S] as the payload."""
    shape, data = pixels_to_bytes(pixels)
    targets = [
        {
            "classifier": t.classifier,
            "version": t.version,
            "labels": None if t.labels is None else {"names": t.labels.names, "new": t.labels.new},
        }
        for t in request.targets
    ]
    return {"op": "score", "targets": targets, "top_k": request.top_k, "shape": shape}, data


def decode_score(header: Header, payload: bytes) -> tuple[ScoreRequest, Tensor]:
    """The inverse of `encode_score`."""
    targets = [
        ScoreTarget(
            str(t["classifier"]),
            str(t["version"]),
            None if t["labels"] is None else LabelRequest(t["labels"]["names"], t["labels"]["new"]),
        )
        for t in header["targets"]
    ]
    return ScoreRequest(targets, int(header["top_k"])), pixels_from_bytes(header["shape"], payload)


def _labels_header(labels: LabelRequest | None) -> Header | None:
    return None if labels is None else {"names": labels.names, "new": labels.new}


def _labels_of(header: Header | None) -> LabelRequest | None:
    return None if header is None else LabelRequest(header["names"], header["new"])


def encode_embed(request: EmbedRequest, pixels: Tensor | None) -> tuple[Header, bytes]:
    """An embed call: the request in the header, uint8 pixels (images) as the payload."""
    header: Header = {
        "op": "embed",
        "classifier": request.classifier,
        "version": request.version,
        "labels": _labels_header(request.labels),
    }
    if pixels is None:
        return header, b""
    shape, data = pixels_to_bytes(pixels)
    return header | {"shape": shape}, data


def decode_embed(header: Header, payload: bytes) -> tuple[EmbedRequest, Tensor | None]:
    """The inverse of `encode_embed`."""
    request = EmbedRequest(
        str(header["classifier"]), str(header["version"]), _labels_of(header["labels"])
    )
    if "shape" not in header:
        return request, None
    return request, pixels_from_bytes(header["shape"], payload)


def encode_embeddings(embeddings: Tensor) -> Header:
    """[n, D] float embeddings as a reply (float32 as JSON numbers)."""
    return {"embeddings": embeddings.float().tolist()}


def decode_embeddings(reply: Header) -> Tensor:
    return torch.tensor(reply["embeddings"], dtype=torch.float32)


def encode_results(results: list[ClassifyResult]) -> Header:
    return {
        "results": [
            {
                "classifier": result.classifier,
                "version": result.version,
                "predictions": [[[p.label, p.score] for p in row] for row in result.predictions],
                "encoded_labels": result.encoded_labels,
            }
            for result in results
        ]
    }


def decode_results(reply: Header) -> list[ClassifyResult]:
    """The inverse of `encode_results`."""
    return [
        ClassifyResult(
            r["classifier"],
            r["version"],
            [[Prediction(label, score) for label, score in row] for row in r["predictions"]],
            r["encoded_labels"],
        )
        for r in reply["results"]
    ]


def pixels_to_bytes(pixels: Tensor) -> tuple[list[int], bytes]:
    """uint8 [n, 3, S, S] -> (shape, bytes)."""
    assert pixels.dtype == torch.uint8, pixels.dtype  # the engine normalises, not the worker
    array = pixels.detach().cpu().contiguous().numpy()
    return list(array.shape), array.tobytes()


def pixels_from_bytes(shape: list[int], data: bytes) -> Tensor:
    """The inverse of `pixels_to_bytes`; a ValueError when the sizes disagree."""
    if len(shape) != 4 or any(not isinstance(n, int) or n < 1 for n in shape):
        raise ValueError(f"pixels need a shape [n, 3, S, S], got {shape!r}")
    array = np.frombuffer(data, dtype=np.uint8)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{len(data)} bytes of pixels do not fill the shape {shape}")
    return torch.from_numpy(array.reshape(shape).copy())


# --- errors -----------------------------------------------------------------------------------


def encode_error(exc: BaseException) -> Header:
    """How an exception raised in the engine reaches the API worker: its public answer."""
    return public_error(exc)._asdict()


def raise_error(error: Header) -> None:
    """Raise the error `encode_error` describes, with its status, code and message."""
    headers = error.get("headers")
    fields = error.get("fields")
    raise ForwardedError(
        PublicError(
            int(error["status"]), str(error["code"]), str(error["message"]), headers, fields
        )
    )
