"""Few-shot tuning jobs: ``POST /adapt`` queues one; ``/jobs`` lists, shows, cancels them and
streams their events (the shape of the OpenAI fine-tuning jobs API: create, list, get, cancel,
events)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response

from promptserve.service.api.adapt_body import ADAPT_REQUEST_BODY, read_adapt_form, read_adapt_json
from promptserve.service.api.auth import TuneKey, audit, check_classifier, sees_every_job
from promptserve.service.api.bodies import is_json, media_type
from promptserve.service.api.deps import JobClientDep, JobStoreDep, RuntimeDep
from promptserve.service.api.schemas.common import error_responses
from promptserve.service.api.schemas.jobs import (
    JobEventListPublic,
    JobEventPublic,
    JobListPublic,
    JobPublic,
)
from promptserve.service.errors import (
    IdempotencyConflictError,
    InvalidRequestError,
    TooManyJobsError,
    UnknownJobError,
    UnsupportedMediaTypeError,
)
from promptserve.service.jobs.client import JobClient
from promptserve.service.jobs.plan import plan_job, submit_job
from promptserve.service.jobs.store import Event, Job, QueueFullError
from promptserve.service.keys import Key
from promptserve.service.logs import current_request_id, run_in
from promptserve.service.tracing import current_traceparent

# the job's public fields that are its training request's own
TRAIN_FIELDS = ("name", "method", "backbone", "preset", "shots", "epochs", "seed")
CANCEL_WAIT_S = 5.0  # how long POST /jobs/{id}/cancel waits for a running job to stop

# under /v1 too; every route needs the `tune` scope (TuneKey), and a tune key sees only the jobs
# it started: another's job is a 404, as if it did not exist
router = APIRouter(tags=["jobs"], responses=error_responses(403))

IDEMPOTENCY_KEY = r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"  # visible ASCII, spaces inside


@router.post(
    "/adapt",
    status_code=202,
    openapi_extra=ADAPT_REQUEST_BODY,
    responses=error_responses(400, 401, 413, 415, 422),
)
async def adapt(
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    key: TuneKey,
    # an empty or blank key would be one key shared by every client: refused with a 422
    idempotency_key: Annotated[
        str | None, Header(min_length=1, max_length=255, pattern=IDEMPOTENCY_KEY)
    ] = None,
) -> JobPublic:
    """Queue a few-shot tuning job; it publishes a new version of classifier `name`.

    Send labelled images (multipart `images` files with one `labels` field per image, or JSON
    `{"images": [{"data": <base64>, "label": ...}]}`), or a `dataset` under the data root.
    A repeated `Idempotency-Key` returns the job the first request created.

    `publish` (default `gated` on /v1, `always` on the deprecated /adapt): gated, the new
    version takes `alias` (default `latest`) only if its held-out accuracy beats zero-shot and
    the alias's current version on the same held-out images; otherwise it is published as a
    candidate that no alias follows. The succeeded job's `result.gate` says why.
    """
    settings = runtime.settings
    queued = await run_in(runtime.intake, runtime.jobs.count, "queued")
    if queued >= settings.max_queued_jobs:  # before the body is read (and again at the insert)
        raise _too_many_jobs(queued, settings.retry_after_s)
    media = media_type(request)
    if media == "multipart/form-data":
        create, uploads = await read_adapt_form(request, runtime)
    elif is_json(media):
        create, uploads = await read_adapt_json(request, runtime)
    else:
        raise UnsupportedMediaTypeError(
            f"unsupported Content-Type {media or '(none)'!r}: send multipart/form-data or "
            "application/json"
        )
    check_classifier(key, [create.name])
    if create.publish is None:  # gated on /v1; the deprecated /adapt publishes as it always did
        v1 = request.url.path.startswith("/v1/")
        create = create.model_copy(update={"publish": "gated" if v1 else "always"})
    plan = await run_in(runtime.intake, plan_job, create, uploads, settings)
    plan = plan.traced(current_traceparent())  # the job's spans join this request's trace
    owner = key.name if key is not None else None
    try:
        job, created = await run_in(
            runtime.intake,
            submit_job,
            plan,
            runtime.jobs,
            runtime.job_files,
            idempotency_key,
            owner,
            current_request_id(),
            settings.max_queued_jobs,
        )
    except QueueFullError as exc:  # others were queued while this body was read
        raise _too_many_jobs(exc.queued, settings.retry_after_s) from None
    if not created and not _sees(key, job):
        raise IdempotencyConflictError("this Idempotency-Key was used by another API key")
    if created:
        runtime.job_client.wake()
        audit(key, "adapt", classifier=create.name, job=job.id)
    prefix = "/v1" if request.url.path.startswith("/v1/") else ""
    response.headers["Location"] = f"{prefix}/jobs/{job.id}"
    return job_public(job)


@router.get("/jobs", responses=error_responses(401, 422))
async def list_jobs(
    jobs: JobStoreDep,
    key: TuneKey,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[
        str | None, Query(description="id of the last job of the previous page")
    ] = None,
) -> JobListPublic:
    """Jobs, newest first (a `tune` key's own only)."""
    owner = key.name if key is not None and not sees_every_job(key) else None
    try:
        page, has_more = await asyncio.to_thread(jobs.page, limit=limit, after=after, owner=owner)
    except KeyError:
        raise InvalidRequestError(f"after: no job {after!r}") from None
    return JobListPublic(
        data=[job_public(job) for job in page],
        has_more=has_more,
        next_after=page[-1].id if has_more and page else None,
    )


@router.get("/jobs/{job_id}", responses=error_responses(401, 404))
async def get_job(job_id: str, client: JobClientDep, key: TuneKey) -> JobPublic:
    """State, progress, and on success the published version with its accuracies."""
    return job_public(await _own_job(client, job_id, key))


@router.post("/jobs/{job_id}/cancel", responses=error_responses(401, 404, 409))
async def cancel_job(job_id: str, client: JobClientDep, key: TuneKey) -> JobPublic:
    """Cancel a queued job at once, or stop a running one (waits up to a few seconds for it).

    A running job stops between two training steps and publishes nothing. A job that has
    already ended is a 409.
    """
    await _own_job(client, job_id, key)
    job = await client.cancel(job_id, wait_s=CANCEL_WAIT_S)
    audit(key, "cancel", job=job_id, classifier=job.spec.train.name)
    return job_public(job)


@router.get("/jobs/{job_id}/events", responses=error_responses(401, 404))
async def list_job_events(
    job_id: str,
    client: JobClientDep,
    key: TuneKey,
    after: Annotated[int, Query(ge=0, description="seq of the last event already seen")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobEventListPublic:
    """The job's events in order: created, started, each epoch, published or the error."""
    await _own_job(client, job_id, key)
    events = await asyncio.to_thread(client.jobs.events, job_id, after=after, limit=limit + 1)
    return JobEventListPublic(
        data=[_event_public(event) for event in events[:limit]], has_more=len(events) > limit
    )


def _too_many_jobs(queued: int, retry_after_s: int) -> TooManyJobsError:
    return TooManyJobsError(
        f"{queued} jobs are waiting for a worker, the most this service queues; retry later",
        headers={"Retry-After": str(retry_after_s * 30)},
    )


def _sees(key: Key | None, job: Job) -> bool:
    return sees_every_job(key) or (key is not None and job.owner == key.name)


async def _own_job(client: JobClient, job_id: str, key: Key | None) -> Job:
    """Job `job_id` if `key` may see it; another key's job is unknown (404), like a missing one."""
    job = await client.get(job_id)
    if not _sees(key, job):
        raise UnknownJobError(f"no job {job_id!r}")
    return job


def job_public(job: Job) -> JobPublic:
    train = job.spec.train
    return JobPublic(
        **{name: getattr(train, name) for name in TRAIN_FIELDS},
        config=train.overrides,
        data=job.spec.data,
        classes=job.spec.classes,
        images=job.spec.images,
        id=job.id,
        state=job.state,
        created_at=_iso(job.created_at),
        started_at=_iso(job.started_at),
        finished_at=_iso(job.finished_at),
        progress=job.progress,
        result=job.result,
        error=job.error,  # type: ignore[arg-type]  # validated into JobErrorPublic
        cancel_requested=job.cancel_requested,
        publish=job.spec.publish,
        alias=job.spec.alias,
        request_id=job.spec.request_id,
        owner=job.owner,
    )


def _event_public(event: Event) -> JobEventPublic:
    return JobEventPublic(
        seq=event.seq, at=_iso(event.at), level=event.level, message=event.message, data=event.data
    )


def _iso(timestamp: float | None) -> Any:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
