"""Liveness and readiness; never behind the API key (orchestrators probe them).

Readiness follows the default classifier after start-up too: its newest version must still be
servable, which is checked on every probe from the files (the manifest read, every file it
lists and its shared graph there; a stat each, no hashing), so a default removed, emptied or
damaged behind the service's back turns the probe to 503 with the reason, and back to 200 once
it is restored, without a restart.
"""

from __future__ import annotations

import asyncio
import os

from fastapi import APIRouter, Depends

from promptserve.models.artifact import graph_ref
from promptserve.models.graphs import graph_dir
from promptserve.service.api.auth import PUBLIC
from promptserve.service.api.deps import RuntimeDep
from promptserve.service.api.schemas.common import (
    HealthPublic,
    JobsHealthPublic,
    error_responses,
)
from promptserve.service.catalog import Catalog
from promptserve.service.errors import NotReadyError
from promptserve.service.public_errors import public_error

AVAILABLE = JobsHealthPublic(status="available")
router = APIRouter(prefix="/health", tags=["health"], dependencies=[Depends(PUBLIC)])


@router.get("/live", response_model_exclude_none=True)
async def live() -> HealthPublic:
    """The process is up and answering."""
    return HealthPublic(status="live")


@router.get("/ready", responses=error_responses(503))
async def ready(runtime: RuntimeDep) -> HealthPublic:
    """200 once the default classifier is loaded and warm (and still servable), else 503.

    `jobs` says whether tuning jobs can be served: a job database that is locked, damaged or
    down leaves the service ready (it classifies), with `jobs.status` "unavailable"."""
    await runtime.engine.ready()
    name = runtime.settings.default_classifier
    try:
        version = await asyncio.to_thread(servable_version, runtime.catalog, name)
    except NotReadyError:
        raise
    except Exception as exc:  # removed, unreadable or damaged since start-up
        message = public_error(exc).message
        raise NotReadyError(f"the default classifier cannot be served: {message}") from None
    jobs = await asyncio.to_thread(runtime.jobs.probe)
    return HealthPublic(
        status="ready",
        default_classifier=name,
        version=version,
        jobs=JobsHealthPublic(status="unavailable", message=jobs) if jobs else AVAILABLE,
    )


def servable_version(catalog: Catalog, name: str) -> str:
    """The newest version of `name` if its files are there to serve it; NotReadyError (or the
    catalog's own error) naming what is missing otherwise."""
    version = catalog.resolve(name)
    manifest = catalog.manifest(name, version)
    path = catalog.root / name / version
    files = manifest.get("files")
    missing = [
        str(f)
        for f in (files if isinstance(files, dict) else {})
        if not (path / f).is_file() or not os.access(path / f, os.R_OK)
    ]
    ref = graph_ref(manifest)
    if ref is not None and not graph_dir(catalog.root, ref).is_dir():
        missing.append("its shared visual graph")
    if missing or not isinstance(files, dict):
        lacking = ", ".join(missing) or "its file list"
        raise NotReadyError(
            f"the default classifier cannot be served: {name} version {version} lacks {lacking}"
        )
    return version
