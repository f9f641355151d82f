"""``POST /classify``: images as multipart files, JSON base64, the Hugging Face
zero-shot-image-classification shape, or one raw image body.

The shape is chosen by Content-Type (and, for JSON, by an ``inputs`` key), so one URL serves
curl, browsers' forms, and ``huggingface_hub.InferenceClient(model=".../classify?classifier=N")``.
``classifier``, ``version``, ``top_k`` and ``labels`` may also come as query parameters; a value
in the body wins. ``classifiers=a,b,c`` names several classifiers: each scores every image, and
the answer lists one result per classifier (`ClassifyManyPublic`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from promptserve.service.api.bodies import (
    FORM_TYPES,
    is_json,
    media_type,
    read_form,
    read_json,
    validate_body,
)
from promptserve.service.api.deps import RuntimeDep, require_api_key
from promptserve.service.api.schemas import (
    ClassifyCreate,
    ClassifyManyPublic,
    ClassifyPublic,
    HFZeroShotCreate,
    PredictionPublic,
    error_responses,
    inline_schema,
)
from promptserve.service.classify.pipeline import ClassifyQuery
from promptserve.service.classify.scoring import ClassifyResult
from promptserve.service.errors import UnsupportedMediaTypeError
from promptserve.service.runtime import Runtime

FORM_FIELDS = ("classifier", "version", "top_k", "labels", "classifiers")
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
        "classifiers": {
            "type": "array",
            "items": {"type": "string"},
            "description": "several classifiers; repeat the field or separate with commas",
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
    response_model=ClassifyPublic | ClassifyManyPublic | list[PredictionPublic],
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
    classifiers: Annotated[
        list[str] | None, Query(description="several classifiers, comma-separated")
    ] = None,
) -> ClassifyPublic | ClassifyManyPublic | list[PredictionPublic]:
    """Per image, the `top_k` most probable labels (softmax over the label set used).

    A Hugging Face zero-shot body (``{"inputs": ..., "parameters": {"candidate_labels": ...}}``)
    is answered in that task's shape: a bare list of ``{"label", "score"}`` for every candidate.
    """
    defaults = ClassifyCreate(
        classifier=classifier,
        version=version,
        top_k=top_k,
        labels=split_labels(labels),
        classifiers=split_labels(classifiers),
    )
    media = media_type(request)
    images: list[bytes] | list[str]
    if media in FORM_TYPES:
        images, body = await _from_form(request, runtime)
    elif is_json(media):
        payload = await read_json(request, runtime.preparer.pool)
        if isinstance(payload, dict) and "inputs" in payload:
            return await _classify_hf(payload, runtime, defaults)
        body = validate_body(ClassifyCreate, payload)
        images = body.images
    elif media.startswith("image/") or media in RAW_TYPES:
        images, body = [await request.body()], defaults
    else:
        raise UnsupportedMediaTypeError(
            f"unsupported Content-Type {media or '(none)'!r}: send multipart/form-data, "
            "application/json or an image/* body"
        )
    query = _query(images, body, defaults)
    results = await runtime.classify(query)
    if query.classifiers is not None:
        return ClassifyManyPublic(results=[_public(result) for result in results])
    return _public(results[0])


def split_labels(values: list[str] | None) -> list[str] | None:
    """Repeated and/or comma-separated label fields -> one list (None when none given)."""
    names = [part.strip() for value in values or () for part in value.split(",")]
    return [name for name in names if name] or None


def _query(
    images: list[bytes] | list[str], body: ClassifyCreate, defaults: ClassifyCreate
) -> ClassifyQuery:
    """The request's images with its fields; a field absent from the body comes from the query
    string."""
    return ClassifyQuery(
        images=images,
        classifier=body.classifier or defaults.classifier,
        version=body.version or defaults.version,
        top_k=body.top_k if body.top_k is not None else defaults.top_k,
        labels=body.labels if body.labels is not None else defaults.labels,
        classifiers=body.classifiers if body.classifiers is not None else defaults.classifiers,
    )


def _public(result: ClassifyResult) -> ClassifyPublic:
    return ClassifyPublic(
        classifier=result.classifier,
        version=result.version,
        predictions=[
            [PredictionPublic(label=p.label, score=p.score) for p in row]
            for row in result.predictions
        ],
        encoded_labels=result.encoded_labels,
    )


async def _from_form(request: Request, runtime: Runtime) -> tuple[list[bytes], ClassifyCreate]:
    limit = runtime.settings.max_images_per_request
    form = await read_form(request, fields=FORM_FIELDS, max_files=max(limit * 4, 64))
    lists = ("labels", "classifiers")
    fields: dict[str, Any] = {
        name: values[0] for name, values in form.fields.items() if name not in lists and values[0]
    }
    fields |= {name: split_labels(form.fields.get(name)) for name in lists}
    return form.files, validate_body(ClassifyCreate, fields)


async def _classify_hf(
    payload: dict[str, Any], runtime: Runtime, defaults: ClassifyCreate
) -> list[PredictionPublic]:
    create = validate_body(HFZeroShotCreate, payload)
    labels = create.parameters.candidate_labels
    query = ClassifyQuery(
        images=[create.inputs],
        classifier=defaults.classifier,
        version=defaults.version,
        top_k=len(labels),  # the task answers with every candidate, ranked
        labels=labels,
    )
    (result,) = await runtime.classify(query)
    return [PredictionPublic(label=p.label, score=p.score) for p in result.predictions[0]]
