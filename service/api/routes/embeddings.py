"""``POST /v1/embeddings``: a classifier's embeddings of images or label texts, in the OpenAI
embeddings shape, through the same pipeline, engines and limits as classify."""

from __future__ import annotations

from fastapi import APIRouter, Request

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
from promptserve.service.api.schemas.common import error_responses, inline_schema
from promptserve.service.api.schemas.embeddings import (
    EmbeddingListPublic,
    EmbeddingPublic,
    EmbeddingsCreate,
    EmbeddingUsagePublic,
    Modality,
)
from promptserve.service.errors import UnsupportedMediaTypeError

router = APIRouter(
    tags=["embeddings"],
    responses=error_responses(400, 401, 403, 404, 413, 415, 422, 429, 503),
)

_EMBEDDINGS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inline_schema(EmbeddingsCreate)},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["images"],
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                        },
                        "classifier": {"type": "string"},
                    },
                }
            },
        },
    }
}


@router.post("/embeddings", openapi_extra=_EMBEDDINGS_BODY)
async def embeddings(
    request: Request, runtime: RuntimeDep, key: ClassifyKey
) -> EmbeddingListPublic:
    """The classifier's embeddings, in the OpenAI embeddings shape: of images (base64 in JSON
    `input` with `modality: "image"`, or multipart `images` files) the prompted visual
    embedding it scores with, of label texts (`modality: "text"`) its own text path. Each is
    L2-normalised: an image's dot product with a label's is the cosine classify ranks by."""
    media = media_type(request)
    if media in FORM_TYPES:
        limit = runtime.settings.max_images_per_request
        form = await read_form(request, fields=("classifier",), max_files=max(limit * 4, 64))
        ref = next(iter(form.fields.get("classifier") or ()), None) or None
        modality: Modality = "image"
        images: list[bytes] | list[str] | None = form.files
        texts: list[str] | None = None
    elif is_json(media):
        body = validate_body(EmbeddingsCreate, await read_json(request, runtime.preparer.pool))
        ref, modality = body.classifier, body.modality
        images, texts = (body.input, None) if modality == "image" else (None, body.input)
    else:
        raise UnsupportedMediaTypeError(
            f"unsupported Content-Type {media or '(none)'!r}: send application/json or "
            "multipart/form-data"
        )
    check_classifier(key, [ref or runtime.settings.default_classifier])
    resolved, vectors = await runtime.pipeline.embed(ref, images=images, texts=texts)
    rows = vectors.tolist()
    return EmbeddingListPublic(
        model=f"{resolved.name}@{resolved.version}",
        classifier=resolved.name,
        version=resolved.version,
        data=[
            EmbeddingPublic(index=i, modality=modality, embedding=row) for i, row in enumerate(rows)
        ],
        usage=EmbeddingUsagePublic(
            images=len(rows) if modality == "image" else 0,
            texts=len(rows) if modality == "text" else 0,
        ),
    )
