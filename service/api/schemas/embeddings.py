"""Bodies of POST /v1/embeddings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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
