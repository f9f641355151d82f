"""The body of ``POST /adapt``: JSON with base64 images, or a multipart form with one
``labels`` field per image file, read into an `AdaptCreate` and its labelled images; and the
request body's OpenAPI description, which FastAPI cannot derive from a route that reads its own
body.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from promptserve.service.api.bodies import read_form, read_json, validate_body
from promptserve.service.api.schemas.common import inline_schema
from promptserve.service.api.schemas.jobs import AdaptCreate
from promptserve.service.classify.decoding import decode_all
from promptserve.service.errors import InvalidRequestError
from promptserve.service.logs import run_in
from promptserve.service.runtime import Runtime

FORM_FIELDS = tuple(name for name in AdaptCreate.model_fields if name != "images") + ("labels",)

MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "labels": {
            "type": "array",
            "items": {"type": "string"},
            "description": "one per image, in the same order",
        },
        **{
            key: value
            for key, value in inline_schema(AdaptCreate)["properties"].items()
            if key not in ("config", "images")
        },
        "config": {"type": "string", "description": "a JSON object of method config overrides"},
    },
}
ADAPT_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": MULTIPART_SCHEMA},
            "application/json": {"schema": inline_schema(AdaptCreate)},
        },
    }
}


async def read_adapt_json(
    request: Request, runtime: Runtime
) -> tuple[AdaptCreate, list[tuple[bytes, str]] | None]:
    create = validate_body(AdaptCreate, await read_json(request, runtime.intake))
    if create.images is None:
        return create, None
    texts = [item.data for item in create.images]
    images = await run_in(runtime.intake, decode_all, texts)
    return create, [(data, item.label) for data, item in zip(images, create.images, strict=True)]


async def read_adapt_form(
    request: Request, runtime: Runtime
) -> tuple[AdaptCreate, list[tuple[bytes, str]] | None]:
    limit = runtime.settings.max_job_images
    form = await read_form(request, fields=FORM_FIELDS, max_files=limit + 1)
    labels = form.fields.pop("labels", [])
    data: dict[str, Any] = {name: values[0] for name, values in form.fields.items() if values[0]}
    if "config" in data:
        data["config"] = _json_object(str(data["config"]))
    create = validate_body(AdaptCreate, data)
    if not form.files and not labels:
        return create, None
    if len(form.files) != len(labels):
        raise InvalidRequestError(
            f"{len(form.files)} images and {len(labels)} labels: send one labels field per image"
        )
    return create, list(zip(form.files, labels, strict=True))


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidRequestError(f"config must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequestError("config must be a JSON object")
    return value
