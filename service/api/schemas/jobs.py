"""Bodies of /v1/adapt and /v1/jobs: an adapt request, jobs and their events."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from promptserve.training.request import AUTO_BUDGET_S


class AdaptImageCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="base64-encoded image file (a data: URL prefix is accepted)")
    label: str = Field(description="its class name")


class AdaptCreate(BaseModel):
    """An adapt request: labelled base64 images in JSON, or a `dataset` reference; the fields
    other than `images` also come as multipart form fields (with image files)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the classifier to create, or to add a version to")
    method: str = Field(
        default="coop",
        description="a registered method (a 422 lists them), or auto: the best of a fixed set "
        "of candidates on validation folds of the training images",
    )
    backbone: str | None = Field(
        default=None, description="ARCH or ARCH:TAG; default: the default classifier's"
    )
    preset: str | None = Field(
        default=None, description="a named recipe of the method; default: `mini` on mini"
    )
    shots: int = Field(default=16, ge=1, le=1024, description="training images per class")
    epochs: int | None = Field(default=None, ge=1, description="default: the method's")
    seed: int = Field(default=1, ge=0, le=2**31 - 1)
    auto_budget_s: float | None = Field(
        default=None,
        gt=0,
        le=86400,
        description="method auto: no candidate starts after this many seconds "
        f"(default {AUTO_BUDGET_S:g})",
    )
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
        "current}}; method auto: auto {winner, reason, validation, candidates}"
    )
    error: JobErrorPublic | None
    cancel_requested: bool
    publish: str = Field(default="always", description="gated or always")
    alias: str = Field(default="latest", description="the alias the new version takes")
    request_id: str | None = Field(
        default=None, description="X-Request-ID of the request that made the job"
    )
    owner: str | None = Field(
        default=None, description="the name of the API key that started the job (None: no keys)"
    )


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
