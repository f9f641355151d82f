"""Reading request bodies, for every route that takes one: the media type, JSON (parsed off
the loop), multipart forms (files and text fields, unknown fields refused), validation into a
schema with one readable 422 line."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from promptserve.service.errors import (
    InvalidBodyError,
    InvalidRequestError,
    validation_fields,
    validation_message,
)

M = TypeVar("M", bound=BaseModel)

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
INLINE_JSON_BYTES = 256 * 1024  # smaller JSON bodies are parsed on the event loop


def media_type(request: Request) -> str:
    """The request's Content-Type without parameters, lower case ('' when absent)."""
    return (request.headers.get("content-type") or "").split(";")[0].strip().lower()


def is_json(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


def validate_body(model: type[M], data: Any) -> M:
    """`data` as `model`; a mismatch is a 422 with one readable line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        fields = validation_fields(errors, ("body",))
        raise InvalidRequestError(validation_message(errors), fields=fields) from None


async def read_json(request: Request, pool: Executor | None = None) -> Any:
    """The parsed JSON body, parsed on `pool` (bodies hold megabytes of base64; each kind of
    request parses on its own pool, so one kind cannot starve another)."""
    body = await request.body()
    if not body:
        raise InvalidBodyError("empty JSON body")
    try:
        if len(body) <= INLINE_JSON_BYTES:  # parsing takes microseconds: no thread hand-off
            return orjson.loads(body)
        return await asyncio.get_running_loop().run_in_executor(pool, orjson.loads, body)
    except (orjson.JSONDecodeError, RecursionError) as exc:
        raise InvalidBodyError(f"malformed JSON: {exc}") from None


@dataclass(frozen=True)
class FormBody:
    files: list[bytes]  # the parts of the file field, in order
    fields: dict[str, list[str]]  # text fields, each with its values in order


async def read_form(
    request: Request, *, fields: Collection[str], max_files: int, file_field: str = "images"
) -> FormBody:
    """A multipart (or url-encoded) form: the `file_field` parts as bytes, the text `fields`.

    Unknown field names and text values in the file field are 422s.
    """
    known = {*fields, file_field}
    max_fields = len(known) + max_files
    if media_type(request) == "multipart/form-data":
        form = await _read_multipart(request, max_files=max_files, max_fields=max_fields)
    else:
        form = await request.form(max_files=max_files, max_fields=max_fields)
    try:
        unknown = sorted(set(form.keys()) - known)
        if unknown:
            raise InvalidRequestError(f"unknown form field(s) {unknown}; known: {sorted(known)}")
        files = []
        for index, item in enumerate(form.getlist(file_field)):
            if not isinstance(item, UploadFile):
                raise InvalidRequestError(
                    f"{file_field}[{index}] must be a file part, not a text field"
                )
            files.append(await item.read())
        values = {name: [str(v) for v in form.getlist(name)] for name in fields if name in form}
    finally:
        await form.close()
    return FormBody(files, values)


class _InMemoryParts(MultiPartParser):
    """Starlette's multipart parser with file parts kept in memory: its default spools a part
    over 1 MiB to a temporary file and then writes, seeks and reads it through the thread pool,
    chunk by chunk (about a quarter of the server's non-decode CPU for a 2 MB photo). The body
    limit and the in-flight body budget (`service.api.uploads`) already bound what a request
    may hold in memory."""

    spool_max_size = 0  # SpooledTemporaryFile: 0 never rolls over


async def _read_multipart(request: Request, *, max_files: int, max_fields: int) -> FormData:
    try:
        async with contextlib.aclosing(request.stream()) as stream:
            parser = _InMemoryParts(
                request.headers, stream, max_files=max_files, max_fields=max_fields
            )
            return await parser.parse()
    except MultiPartException as exc:  # what Request.form answers
        raise HTTPException(status_code=400, detail=exc.message) from None
