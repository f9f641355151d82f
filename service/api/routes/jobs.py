"""Few-shot tuning jobs: ``POST /adapt`` queues one; ``/jobs`` lists, shows, cancels them and
streams their events (the shape of the OpenAI fine-tuning jobs API: create, list, get, cancel,
events)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from starlette.datastructures import UploadFile

from service.api.bodies import read_json, validate_body
from service.api.deps import RuntimeDep, require_api_key
from service.api.schemas import (
    AdaptCreate,
    AdaptOptions,
    JobEventListPublic,
    JobEventPublic,
    JobListPublic,
    JobPublic,
    error_responses,
    inline_schema,
)
from service.errors import (
    InvalidRequestError,
    JobFinishedError,
    UnknownJobError,
    UnsupportedMediaTypeError,
)
from service.jobs.plan import plan_job, submit_job
from service.jobs.store import Event, Job
from service.runtime import Runtime

OPTION_FIELDS = tuple(AdaptOptions.model_fields)
# the job fields that come from the request as validated by service.jobs.plan.plan_job
SPEC_FIELDS = (
    "name",
    "method",
    "backbone",
    "preset",
    "shots",
    "epochs",
    "seed",
    "config",
    "data",
    "classes",
    "images",
)
CANCEL_WAIT_S = 5.0  # how long POST /jobs/{id}/cancel waits for a running job to stop

router = APIRouter(tags=["jobs"], dependencies=[Depends(require_api_key)])

_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "labels": {
            "type": "array",
            "items": {"type": "string"},
            "description": "one per image, in the same order",
        },
        **{
            key: value
            for key, value in inline_schema(AdaptOptions)["properties"].items()
            if key != "config"
        },
        "config": {"type": "string", "description": "a JSON object of method config overrides"},
    },
}
_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
            "application/json": {"schema": inline_schema(AdaptCreate)},
        },
    }
}


@router.post(
    "/adapt",
    status_code=202,
    openapi_extra=_REQUEST_BODY,
    responses=error_responses(400, 401, 413, 415, 422),
)
async def adapt(
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JobPublic:
    """Queue a few-shot tuning job; it publishes a new version of classifier `name`.

    Send labelled images (multipart `images` files with one `labels` field per image, or JSON
    `{"images": [{"data": <base64>, "label": ...}]}`), or a `dataset` under the data root.
    A repeated `Idempotency-Key` returns the job the first request created.
    """
    media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        options, uploads = await _from_multipart(request)
    elif media == "application/json" or media.endswith("+json"):
        options, uploads = await _from_json(request, runtime)
    else:
        raise UnsupportedMediaTypeError(
            f"unsupported Content-Type {media or '(none)'!r}: send multipart/form-data or "
            "application/json"
        )
    settings = runtime.settings
    plan = await asyncio.to_thread(plan_job, options, uploads, settings)
    job, created = await asyncio.to_thread(
        submit_job, plan, runtime.jobs, settings.job_root, idempotency_key
    )
    if created:
        runtime.runner.wake()
    response.headers["Location"] = f"/jobs/{job.id}"
    return job_public(job)


@router.get("/jobs", responses=error_responses(401, 422))
async def list_jobs(
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[
        str | None, Query(description="id of the last job of the previous page")
    ] = None,
) -> JobListPublic:
    """Jobs, newest first."""
    try:
        jobs, has_more = await asyncio.to_thread(runtime.jobs.page, limit=limit, after=after)
    except KeyError:
        raise InvalidRequestError(f"after: no job {after!r}") from None
    return JobListPublic(
        data=[job_public(job) for job in jobs],
        has_more=has_more,
        next_after=jobs[-1].id if has_more and jobs else None,
    )


@router.get("/jobs/{job_id}", responses=error_responses(401, 404))
async def get_job(job_id: str, runtime: RuntimeDep) -> JobPublic:
    """State, progress, and on success the published version with its accuracies."""
    return job_public(await _job(runtime, job_id))


@router.post("/jobs/{job_id}/cancel", responses=error_responses(401, 404, 409))
async def cancel_job(job_id: str, runtime: RuntimeDep) -> JobPublic:
    """Cancel a queued job at once, or stop a running one (waits up to a few seconds for it).

    A running job stops between two training steps and publishes nothing. A job that has
    already ended is a 409.
    """
    job = await _job(runtime, job_id)
    if job.finished:
        raise JobFinishedError(f"job {job_id} has already ended ({job.state})")
    flagged = await asyncio.to_thread(runtime.jobs.request_cancel, job_id)
    job = flagged if flagged is not None else job
    if job.state == "cancelled":  # cancelled while queued: no worker will clean up after it
        await asyncio.to_thread(runtime.runner.drop_uploads, job_id)
    runtime.runner.wake()
    deadline = asyncio.get_running_loop().time() + CANCEL_WAIT_S
    while not job.finished and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
        job = await _job(runtime, job_id)
    if job.state == "succeeded":
        raise JobFinishedError(f"job {job_id} finished and published before it could be cancelled")
    return job_public(job)


@router.get("/jobs/{job_id}/events", responses=error_responses(401, 404))
async def list_job_events(
    job_id: str,
    runtime: RuntimeDep,
    after: Annotated[int, Query(ge=0, description="seq of the last event already seen")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobEventListPublic:
    """The job's events in order: created, started, each epoch, published or the error."""
    await _job(runtime, job_id)
    events = await asyncio.to_thread(runtime.jobs.events, job_id, after=after, limit=limit + 1)
    return JobEventListPublic(
        data=[_event_public(event) for event in events[:limit]], has_more=len(events) > limit
    )


async def _job(runtime: Runtime, job_id: str) -> Job:
    job = await asyncio.to_thread(runtime.jobs.get, job_id)
    if job is None:
        raise UnknownJobError(f"no job {job_id!r}")
    return job


def job_public(job: Job) -> JobPublic:
    return JobPublic(
        **{field: job.spec[field] for field in SPEC_FIELDS},
        id=job.id,
        state=job.state,
        created_at=_iso(job.created_at),
        started_at=_iso(job.started_at),
        finished_at=_iso(job.finished_at),
        progress=job.progress,
        result=job.result,
        error=job.error,  # type: ignore[arg-type]  # validated into JobErrorPublic
        cancel_requested=job.cancel_requested,
    )


def _event_public(event: Event) -> JobEventPublic:
    return JobEventPublic(
        seq=event.seq, at=_iso(event.at), level=event.level, message=event.message, data=event.data
    )


def _iso(timestamp: float | None) -> Any:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


async def _from_json(
    request: Request, runtime: Runtime
) -> tuple[AdaptOptions, list[tuple[bytes, str]] | None]:
    create = validate_body(AdaptCreate, await read_json(request))
    options = AdaptOptions.model_validate(create.model_dump(exclude={"images"}))
    if create.images is None:
        return options, None
    images = await runtime.preparer.decode_base64([item.data for item in create.images])
    return options, [(data, item.label) for data, item in zip(images, create.images, strict=True)]


async def _from_multipart(request: Request) -> tuple[AdaptOptions, list[tuple[bytes, str]] | None]:
    limit = request.app.state.runtime.settings.max_job_images
    async with request.form(max_files=limit + 1, max_fields=limit + 32) as form:
        known = {*OPTION_FIELDS, "images", "labels"}
        unknown = sorted(set(form.keys()) - known)
        if unknown:
            raise InvalidRequestError(f"unknown form field(s) {unknown}; known: {sorted(known)}")
        files = form.getlist("images")
        labels = [str(value) for value in form.getlist("labels")]
        data: dict[str, Any] = {
            key: form.get(key) for key in OPTION_FIELDS if form.get(key) not in (None, "")
        }
        if "config" in data:
            data["config"] = _json_object(str(data["config"]))
        if not files and not labels:
            return validate_body(AdaptOptions, data), None
        if len(files) != len(labels):
            raise InvalidRequestError(
                f"{len(files)} images and {len(labels)} labels: send one labels field per image"
            )
        uploads = []
        for index, (item, label) in enumerate(zip(files, labels, strict=True)):
            if not isinstance(item, UploadFile):
                raise InvalidRequestError(f"images[{index}] must be a file part, not a text field")
            uploads.append((await item.read(), label))
    return validate_body(AdaptOptions, data), uploads


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidRequestError(f"config must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequestError("config must be a JSON object")
    return value
