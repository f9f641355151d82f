"""Reading request bodies, for every route that takes one: the media type, JSON (parsed off
the loop), multipart forms (files and text fields, unknown fields refused), validation into a
schema with one readable 422 line."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

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
    async with request.form(max_files=max_files, max_fields=len(known) + max_files) as form:
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
    return FormBody(files, values)
