"""Request and response bodies. ``XCreate``: what a client sends; ``XPublic``: what it gets."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ClassifyCreate(BaseModel):
    """A classify request: base64 images in JSON (a ``data:`` URL prefix is accepted); the
    other fields also come as multipart form fields or query parameters."""

    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(
        default_factory=list, description="base64-encoded image files (PNG, JPEG, ...)"
    )
    classifier: str | None = Field(
        default=None,
        description="name, name@alias or name@<version>; the default classifier when omitted",
    )
    version: str | None = Field(
        default=None, description="a version or an alias; the alias `latest` when omitted"
    )
    top_k: int | None = Field(default=None, ge=1, description="labels returned per image")
    labels: list[str] | None = Field(
        default=None,
        description="score only these labels; names the classifier lacks are encoded on the fly",
    )
    classifiers: list[str] | None = Field(
        default=None,
        description="several classifiers on one backbone (each name, name@alias or "
        "name@<version>), each scoring every image; the answer lists one result per classifier",
    )

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class HFZeroShotParameters(BaseModel):
    model_config = ConfigDict(extra="ignore")

    candidate_labels: list[str] = Field(min_length=1)
    hypothesis_template: str | None = Field(
        default=None, description="accepted for compatibility; class embeddings are pre-built"
    )


class HFZeroShotCreate(BaseModel):
    """The Hugging Face zero-shot-image-classification request (``InferenceClient``)."""

    model_config = ConfigDict(extra="ignore")

    inputs: str = Field(description="one base64-encoded image")
    parameters: HFZeroShotParameters


class PredictionPublic(BaseModel):
    label: str
    score: float = Field(description="softmax probability over the label set used")


class ClassifyPublic(BaseModel):
    classifier: str
    version: str
    alias: str | None = Field(
        default=None,
        description="the alias the version was chosen by (`latest` for a plain name); null "
        "when the request named a version",
    )
    predictions: list[list[PredictionPublic]] = Field(description="per image, best first")
    encoded_labels: list[str] = Field(
        default_factory=list,
        description="requested labels the classifier was not trained on, encoded on the fly",
    )


class ClassifyManyPublic(BaseModel):
    results: list[ClassifyPublic] = Field(description="one per requested classifier, in order")


class ClassifierSummaryPublic(BaseModel):
    name: str
    versions: list[str]
    latest: str = Field(description="the version the alias `latest` (a plain name) serves")
    default: bool
    aliases: dict[str, str] = Field(
        default_factory=dict, description="every alias with its version, `latest` included"
    )


class ClassifierListPublic(BaseModel):
    default: str
    classifiers: list[ClassifierSummaryPublic]


class ClassifierVersionPublic(BaseModel):
    version: str
    created_at: str | None
    method: str | None
    config: dict[str, Any]
    backbone: dict[str, Any]
    class_names: list[str]
    num_classes: int
    metrics: dict[str, Any]
    training: dict[str, Any]
    parity: dict[str, Any]
    loaded: bool
    open_vocabulary: bool = Field(
        default=False, description="labels outside class_names can be requested (encoded)"
    )
    aliases: list[str] = Field(default_factory=list, description="the aliases pointing at it")
    candidate: bool = Field(
        default=False,
        description="published by a tuning job that failed its gate, and no alias set to it "
        "since: `latest` does not follow it",
    )


class ClassifierPublic(BaseModel):
    name: str
    default: bool
    latest: str
    versions: list[ClassifierVersionPublic]
    aliases: dict[str, str] = Field(
        default_factory=dict, description="every alias with its version, `latest` included"
    )


class AliasCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(description="the version the alias points at (digits, or an alias)")

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class AliasPublic(BaseModel):
    alias: str
    version: str


Modality = Literal["image", "text"]


class EmbeddingsCreate(BaseModel):
    """An embeddings request: base64 images or label texts, embedded by one classifier."""

    model_config = ConfigDict(extra="forbid")

    classifier: str | None = Field(
        default=None, description="name, name@alias or name@<version>; default classifier"
    )
    input: list[str] = Field(
        description="base64 images (a data: URL prefix is accepted) or label texts"
    )
    modality: Modality = "image"


class EmbeddingPublic(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    modality: Modality
    embedding: list[float] = Field(description="L2-normalised")


class EmbeddingUsagePublic(BaseModel):
    images: int
    texts: int


class EmbeddingListPublic(BaseModel):
    object: Literal["list"] = "list"
    model: str = Field(description="name@version")
    classifier: str
    version: str
    data: list[EmbeddingPublic]
    usage: EmbeddingUsagePublic


class AdaptImageCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="base64-encoded image file (a data: URL prefix is accepted)")
    label: str = Field(description="its class name")


class AdaptCreate(BaseModel):
    """An adapt request: labelled base64 images in JSON, or a `dataset` reference; the fields
    other than `images` also come as multipart form fields (with image files)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the classifier to create, or to add a version to")
    method: str = Field(default="coop", description="a registered method; a 422 lists them")
    backbone: str | None = Field(
        default=None, description="ARCH or ARCH:TAG; default: the default classifier's"
    )
    preset: str | None = Field(
        default=None, description="a named recipe of the method; default: `mini` on mini"
    )
    shots: int = Field(default=16, ge=1, le=1024, description="training images per class")
    epochs: int | None = Field(default=None, ge=1, description="default: the method's")
    seed: int = Field(default=1, ge=0, le=2**31 - 1)
    config: dict[str, Any] = Field(
        default_factory=dict, description="overrides of the method's config fields"
    )
    dataset: str | None = Field(
        default=None, description="a folder or manifest under the data root, instead of images"
    )
    images: list[AdaptImageCreate] | None = None
    publish: Literal["gated", "always"] | None = Field(
        default=None,
        description="gated: the new version takes `alias` only when its held-out accuracy "
        "beats zero-shot and the alias's current version on the same images, else it is a "
        "candidate; always: it takes `alias` whatever it scores. Default: gated on /v1, "
        "always on the deprecated /adapt",
    )
    alias: str | None = Field(
        default=None, description="the alias the new version takes (default `latest`)"
    )


class JobErrorPublic(BaseModel):
    reason: str = Field(description="error, interrupted or worker_died")
    message: str


class JobPublic(BaseModel):
    id: str
    state: str = Field(description="queued, running, succeeded, failed or cancelled")
    name: str = Field(description="the classifier the job publishes a version of")
    method: str
    backbone: str
    preset: str | None
    shots: int | None = Field(description="training images per class; None: all")
    epochs: int | None
    seed: int
    config: dict[str, Any]
    data: str = Field(description="'upload' or the dataset reference")
    classes: list[str]
    images: int = Field(description="images received (or found in the dataset)")
    created_at: str
    started_at: str | None
    finished_at: str | None
    progress: dict[str, Any] | None = Field(
        description="epoch, epochs, step, total_steps, loss, lr, eta_s; while running and after"
    )
    result: dict[str, Any] | None = Field(
        description="classifier, version, accuracies (train, held-out, zero-shot held-out); "
        "published (alias or candidate), alias, gate {passed, reason, heldout {new, zeroshot, "
        "current}}"
    )
    error: JobErrorPublic | None
    cancel_requested: bool
    publish: str = Field(default="always", description="gated or always")
    alias: str = Field(default="latest", description="the alias the new version takes")


class JobListPublic(BaseModel):
    data: list[JobPublic] = Field(description="newest first")
    has_more: bool
    next_after: str | None = Field(description="pass as `after` for the next page")


class JobEventPublic(BaseModel):
    seq: int = Field(description="pass as `after` to get only later events")
    at: str
    level: str
    message: str
    data: dict[str, Any] | None


class JobEventListPublic(BaseModel):
    data: list[JobEventPublic]
    has_more: bool


class HealthPublic(BaseModel):
    status: str
    default_classifier: str | None = None
    version: str | None = None


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
