"""Liveness and readiness; never behind the API key (orchestrators probe them)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends

from promptserve.models.errors import UnknownClassifierError, UnknownVersionError
from promptserve.service.api.auth import PUBLIC
from promptserve.service.api.deps import RuntimeDep
from promptserve.service.api.schemas.common import (
    HealthPublic,
    JobsHealthPublic,
    error_responses,
)
from promptserve.service.errors import NotReadyError, public_error

AVAILABLE = JobsHealthPublic(status="available")
router = APIRouter(prefix="/health", tags=["health"], dependencies=[Depends(PUBLIC)])


@router.get("/live", response_model_exclude_none=True)
async def live() -> HealthPublic:
    """The process is up and answering."""
    return HealthPublic(status="live")


@router.get("/ready", responses=error_responses(503))
async def ready(runtime: RuntimeDep) -> HealthPublic:
    """200 once the default classifier is loaded and warm (and still published), else 503.

    `jobs` says whether tuning jobs can be served: a job database that is locked, damaged or
    down leaves the service ready (it classifies), with `jobs.status` "unavailable"."""
    await runtime.engine.ready()
    name = runtime.settings.default_classifier
    try:
        version = runtime.catalog.resolve(name)
    except (UnknownClassifierError, UnknownVersionError) as exc:  # removed since start-up
        message = public_error(exc).message
        raise NotReadyError(f"the default classifier is not available: {message}") from None
    jobs = await asyncio.to_thread(runtime.jobs.probe)
    return HealthPublic(
        status="ready",
        default_classifier=name,
        version=version,
        jobs=JobsHealthPublic(status="unavailable", message=jobs) if jobs else AVAILABLE,
    )
