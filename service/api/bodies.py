"""Request-body helpers shared by the routes: read JSON off the loop, validate into a model."""

from __future__ import annotations

import asyncio
import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from service.errors import InvalidBodyError, InvalidRequestError, validation_message

M = TypeVar("M", bound=BaseModel)


def validate_body(model: type[M], data: Any) -> M:
    """`data` as `model`; a mismatch is a 422 with one readable line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequestError(validation_message(exc.errors())) from None


async def read_json(request: Request) -> Any:
    """The parsed JSON body (parsed in a thread: bodies hold megabytes of base64)."""
    body = await request.body()
    if not body:
        raise InvalidBodyError("empty JSON body")
    try:
        return await asyncio.to_thread(json.loads, body)
    except (ValueError, RecursionError) as exc:
        raise InvalidBodyError(f"malformed JSON: {exc}") from None
