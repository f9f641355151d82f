"""``POST /v1/classify``: images as multipart files, JSON base64, or one raw image body,
answered with one shape (`ClassifyManyPublic`: a `results` list, one per classifier);
``POST /v1/hf/zero-shot-image-classification``: the Hugging Face task's body and answer.

The body is read by Content-Type. ``classifier``, ``version``, ``top_k`` and ``labels`` may also
come as query parameters; a value in the body wins. ``classifiers=a,b,c`` names several
classifiers: each scores every image. The deprecated ``POST /classify`` runs the same handler
and answers as it always has (one result, a `results` list, or the HF list by the body).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from promptserve.service.api.auth import ClassifyKey, check_classifier
from promptserve.service.api.bodies import (
    FORM_TYPES,
    is_json,
    media_type,
    read_form,
    read_json,
    validate_body,
)
from promptserve.service.api.deps import RuntimeDep
from promptserve.service.api.schemas.classify import (
    ClassifyCreate,
    ClassifyManyPublic,
    ClassifyPublic,
    HFZeroShotCreate,
    PredictionPublic,
)
from promptserve.service.api.schemas.common import error_responses, inline_schema
from promptserve.service.classify.pipeline import ClassifyQuery
from promptserve.service.classify.scoring import ClassifyResult
from promptserve.service.errors import InvalidRequestError, UnsupportedMediaTypeError
from promptserve.service.keys import Key
from promptserve.service.logs import note_served
from promptserve.service.runtime import Runtime

FORM_FIELDS = ("classifier", "version", "top_k", "labels", "classifiers")
RAW_TYPES = ("application/octet-stream",)

router = APIRouter(
    tags=["classify"],
    responses=error_responses(400, 401, 403, 404, 413, 415, 422, 429, 503),
)
v1_router = APIRouter(
    tags=["classify"],
    responses=error_responses(400, 401, 403, 404, 413, 415, 422, 429, 503),
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
_V1_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
            "application/json": {"schema": inline_schema(ClassifyCreate)},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "/classify",
    response_model=ClassifyPublic | ClassifyManyPublic | list[PredictionPublic],
    openapi_extra=_REQUEST_BODY,
    deprecated=True,
)
async def classify_legacy(
    request: Request,
    runtime: RuntimeDep,
    defaults: Annotated[ClassifyCreate, Depends(query_defaults)],
    key: ClassifyKey,
) -> ClassifyPublic | ClassifyManyPublic | list[PredictionPublic]:
    """Deprecated: use `POST /v1/classify` (always a `results` list) or
    `POST /v1/hf/zero-shot-image-classification` (the Hugging Face shape).

    Per image, the `top_k` most probable labels. One classifier answers one result, several
    (`classifiers`) a `results` list; a Hugging Face zero-shot body (``{"inputs": ...,
    "parameters": {"candidate_labels": ...}}``) a bare list of ``{"label", "score"}``.
    """
    outcome = await _classify(request, runtime, defaults, key, hf=True)
    if isinstance(outcome, list):
        return outcome  # the Hugging Face shape
    results, many = outcome
    if many:
        return ClassifyManyPublic(results=[_public(result) for result in results])
    return _public(results[0])


@v1_router.post("/classify", openapi_extra=_V1_REQUEST_BODY)
async def classify(
    request: Request,
    runtime: RuntimeDep,
    defaults: Annotated[ClassifyCreate, Depends(query_defaults)],
    key: ClassifyKey,
) -> ClassifyManyPublic:
    """Per image, the `top_k` most probable labels (softmax over the label set used), one
    result per classifier: one, or each of `classifiers`. A classifier is named `name`
    (its alias `latest`), `name@alias` or `name@<version>`."""
    outcome = await _classify(request, runtime, defaults, key, hf=False)
    assert not isinstance(outcome, list)  # hf=False: never the Hugging Face shape
    results, _ = outcome
    return ClassifyManyPublic(results=[_public(result) for result in results])


@v1_router.post(
    "/hf/zero-shot-image-classification",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_schema(HFZeroShotCreate)}},
        }
    },
)
async def classify_hf(
    request: Request,
    runtime: RuntimeDep,
    defaults: Annotated[ClassifyCreate, Depends(query_defaults)],
    key: ClassifyKey,
) -> list[PredictionPublic]:
    """The Hugging Face zero-shot-image-classification task (``huggingface_hub.
    InferenceClient(model=".../v1/hf/zero-shot-image-classification?classifier=N")``): every
    candidate label of the one image, best first."""
    if not is_json(media_type(request)):
        raise UnsupportedMediaTypeError("send the Hugging Face task's application/json body")
    payload = await read_json(request, runtime.preparer.pool)
    return await _classify_hf(payload, runtime, defaults, key)


async def query_defaults(
    classifier: Annotated[
        str | None, Query(description="name, name@alias or name@<version>; default if omitted")
    ] = None,
    version: Annotated[
        str | None, Query(description="a version or alias; `latest` if omitted")
    ] = None,
    top_k: Annotated[int | None, Query(ge=1)] = None,
    labels: Annotated[
        list[str] | None, Query(description="label set; names it lacks are encoded")
    ] = None,
    classifiers: Annotated[
        list[str] | None, Query(description="several classifiers, comma-separated")
    ] = None,
) -> ClassifyCreate:
    """The request's query parameters (a value in the body wins)."""
    return ClassifyCreate(
        classifier=classifier,
        version=version,
        top_k=top_k,
        labels=split_labels(labels),
        classifiers=split_labels(classifiers),
    )


async def _classify(
    request: Request, runtime: Runtime, defaults: ClassifyCreate, key: Key | None, *, hf: bool
) -> tuple[list[ClassifyResult], bool] | list[PredictionPublic]:
    """The one classify handler of both paths: (results, several classifiers asked), or the
    Hugging Face answer when `hf` and the body is that task's."""
    media = media_type(request)
    images: list[bytes] | list[str]
    if media in FORM_TYPES:
        images, body = await _from_form(request, runtime)
    elif is_json(media):
        payload = await read_json(request, runtime.preparer.pool)
        if isinstance(payload, dict) and "inputs" in payload:
            if hf:
                return await _classify_hf(payload, runtime, defaults, key)
            raise InvalidRequestError(
                "a Hugging Face zero-shot body ({'inputs': ...}) goes to "
                "POST /v1/hf/zero-shot-image-classification",
                fields=[{"path": ["body", "inputs"], "message": "not a field of /v1/classify"}],
            )
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
    check_classifier(
        key, query.classifiers or [query.classifier or runtime.settings.default_classifier]
    )
    results = await runtime.classify(query)
    note_served(",".join(r.classifier for r in results), ",".join(r.version for r in results))
    return results, query.classifiers is not None


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
        alias=result.alias,
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
    payload: dict[str, Any], runtime: Runtime, defaults: ClassifyCreate, key: Key | None
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
    check_classifier(key, [query.classifier or runtime.settings.default_classifier])
    (result,) = await runtime.classify(query)
    note_served(result.classifier, result.version)
    return [PredictionPublic(label=p.label, score=p.score) for p in result.predictions[0]]
