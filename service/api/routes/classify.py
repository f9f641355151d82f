"""``POST /classify``: images as multipart files, JSON base64, the Hugging Face
zero-shot-image-classification shape, or one raw image body.

The shape is chosen by Content-Type (and, for JSON, by an ``inputs`` key), so one URL serves
curl, browsers' forms, and ``huggingface_hub.InferenceClient(model=".../classify?classifier=N")``.
``classifier``, ``version``, ``top_k`` and ``labels`` may also come as query parameters; a value
in the body wins.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.datastructures import UploadFile

from service.api.bodies import read_json, validate_body
from service.api.deps import RuntimeDep, require_api_key
from service.api.schemas import (
    ClassifyCreate,
    ClassifyOptions,
    ClassifyPublic,
    HFZeroShotCreate,
    PredictionPublic,
    error_responses,
    inline_schema,
)
from service.classify.pipeline import ClassifyQuery, check_image_count
from service.errors import (
    InvalidRequestError,
    UnsupportedMediaTypeError,
)
from service.runtime import Runtime

FORM_FIELDS = ("images", "classifier", "version", "top_k", "labels")
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
RAW_TYPES = ("application/octet-stream",)

router = APIRouter(
    tags=["classify"],
    dependencies=[Depends(require_api_key)],
    responses=error_responses(400, 401, 404, 413, 415, 422, 429, 503),
)

_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["images"],
    "properties": {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "classifier": {"type": "string"},
        "version": {"type": "string"},
        "top_k": {"type": "integer", "minimum": 1},
        "labels": {
            "type": "array",
            "items": {"type": "string"},
            "description": "repeat the field, or separate names with commas",
        },
    },
}
_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
            "application/json": {
                "schema": {
                    "oneOf": [inline_schema(ClassifyCreate), inline_schema(HFZeroShotCreate)]
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "/classify",
    response_model=ClassifyPublic | list[PredictionPublic],
    openapi_extra=_REQUEST_BODY,
)
async def classify(
    request: Request,
    runtime: RuntimeDep,
    classifier: Annotated[str | None, Query(description="default classifier if omitted")] = None,
    version: Annotated[str | None, Query(description="newest version if omitted")] = None,
    top_k: Annotated[int | None, Query(ge=1)] = None,
    labels: Annotated[
        list[str] | None, Query(description="label set; names it lacks are encoded")
    ] = None,
) -> ClassifyPublic | list[PredictionPublic]:
    """Per image, the `top_k` most probable labels (softmax over the label set used).

    A Hugging Face zero-shot body (``{"inputs": ..., "parameters": {"candidate_labels": ...}}``)
    is answered in that task's shape: a bare list of ``{"label", "score"}`` for every candidate.
    """
    defaults = ClassifyOptions(
        classifier=classifier, version=version, top_k=top_k, labels=split_labels(labels)
    )
    media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if media in FORM_TYPES:
        query = await _from_multipart(request, runtime, defaults)
    elif media == "application/json" or media.endswith("+json"):
        payload = await read_json(request)
        if isinstance(payload, dict) and "inputs" in payload:
            return await _classify_hf(payload, runtime, defaults)
        query = await _from_json(payload, runtime, defaults)
    elif media.startswith("image/") or media in RAW_TYPES:
        query = _query([await request.body()], defaults, defaults)
    else:
        raise UnsupportedMediaTypeError(
            f"unsupported Content-Type {media or '(none)'!r}: send multipart/form-data, "
            "application/json or an image/* body"
        )
    result = await runtime.classify(query)
    return ClassifyPublic(
        classifier=result.classifier,
        version=result.version,
        predictions=[
            [PredictionPublic(label=p.label, score=p.score) for p in row]
            for row in result.predictions
        ],
        encoded_labels=result.encoded_labels,
    )


def split_labels(values: list[str] | None) -> list[str] | None:
    """Repeated and/or comma-separated label fields -> one list (None when none given)."""
    names = [part.strip() for value in values or () for part in value.split(",")]
    return [name for name in names if name] or None


def _query(images: list[bytes], body: ClassifyOptions, defaults: ClassifyOptions) -> ClassifyQuery:
    return ClassifyQuery(
        images=images,
        classifier=body.classifier or defaults.classifier,
        version=body.version or defaults.version,
        top_k=body.top_k if body.top_k is not None else defaults.top_k,
        labels=body.labels if body.labels is not None else defaults.labels,
    )


async def _from_json(payload: Any, runtime: Runtime, defaults: ClassifyOptions) -> ClassifyQuery:
    create = validate_body(ClassifyCreate, payload)
    check_image_count(len(create.images), runtime.settings.max_images_per_request)
    images = await runtime.preparer.decode_base64(create.images)
    return _query(images, create, defaults)


async def _from_multipart(
    request: Request, runtime: Runtime, defaults: ClassifyOptions
) -> ClassifyQuery:
    limit = runtime.settings.max_images_per_request
    async with request.form(max_files=max(limit * 4, 64), max_fields=64) as form:
        unknown = sorted(set(form.keys()) - set(FORM_FIELDS))
        if unknown:
            raise InvalidRequestError(
                f"unknown form field(s) {unknown}; known: {list(FORM_FIELDS)}"
            )
        files = form.getlist("images")
        check_image_count(len(files), limit)
        images = []
        for index, item in enumerate(files):
            if not isinstance(item, UploadFile):
                raise InvalidRequestError(f"images[{index}] must be a file part, not a text field")
            images.append(await item.read())
        fields: dict[str, Any] = {k: form.get(k) for k in ("classifier", "version", "top_k")}
        labels = split_labels([str(v) for v in form.getlist("labels")])
    options = validate_body(
        ClassifyOptions, {k: v for k, v in fields.items() if v} | {"labels": labels}
    )
    return _query(images, options, defaults)


async def _classify_hf(
    payload: dict[str, Any], runtime: Runtime, defaults: ClassifyOptions
) -> list[PredictionPublic]:
    create = validate_body(HFZeroShotCreate, payload)
    images = await runtime.preparer.decode_base64([create.inputs])
    labels = create.parameters.candidate_labels
    query = ClassifyQuery(
        images=images,
        classifier=defaults.classifier,
        version=defaults.version,
        top_k=len(labels),  # the task answers with every candidate, ranked
        labels=labels,
    )
    result = await runtime.classify(query)
    return [PredictionPublic(label=p.label, score=p.score) for p in result.predictions[0]]
