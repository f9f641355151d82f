"""Bodies of POST /v1/classify and of its Hugging Face zero-shot form."""

from __future__ import annotations

from typing import Any

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
