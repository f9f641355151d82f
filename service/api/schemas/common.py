"""What every route shares: the error body and its OpenAPI `responses` entries,
`inline_schema` for request bodies declared by hand, and the health body."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class JobsHealthPublic(BaseModel):
    status: Literal["available", "unavailable"]
    message: str | None = Field(default=None, description="why jobs are unavailable")


class HealthPublic(BaseModel):
    status: str
    default_classifier: str | None = None
    version: str | None = None
    jobs: JobsHealthPublic | None = Field(
        default=None,
        description="whether /adapt and /jobs can be served; readiness does not depend on it",
    )


class FieldErrorPublic(BaseModel):
    path: list[Any] = Field(
        description='where the problem is, names and list indices: ["body", "images", 0]'
    )
    message: str


class ErrorDetailPublic(BaseModel):
    code: str
    message: str
    request_id: str | None = Field(default=None, description="as in the X-Request-ID header")
    fields: list[FieldErrorPublic] | None = Field(
        default=None, description="422 only: each problem with its field path"
    )


class ErrorPublic(BaseModel):
    error: ErrorDetailPublic


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for error statuses, all with the `ErrorPublic` body."""
    return {status: {"model": ErrorPublic} for status in statuses}


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema with its ``$defs`` substituted in place (for ``openapi_extra``)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def substitute(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return substitute(defs[ref.removeprefix("#/$defs/")])
            return {k: substitute(v) for k, v in node.items()}
        if isinstance(node, list):
            return [substitute(v) for v in node]
        return node

    return dict(substitute(schema))
