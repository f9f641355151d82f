"""Request dependencies: one `Annotated` alias per resource a route may need (the runtime, its
settings, the classifier catalog, the job store and client, the metrics); who may call a route
is `service.api.auth`'s.

Every dependency here is ``async def`` although none awaits: FastAPI runs a plain ``def``
dependency on its thread pool, two thread hand-offs per dependency per request (about a tenth
of a small classify request's server CPU on `mini`; docs/performance.md)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request

from promptserve.service.catalog import Catalog
from promptserve.service.jobs.client import JobClient
from promptserve.service.jobs.store import JobStore
from promptserve.service.metrics import Metrics
from promptserve.service.runtime import Runtime
from promptserve.service.settings import Settings


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_app_settings(runtime: RuntimeDep) -> Settings:
    """The settings the app was created with (not necessarily the environment's)."""
    return runtime.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def _runtime_part(name: str) -> Callable[[Runtime], Awaitable[Any]]:
    """A dependency that returns one part of the runtime (catalog, jobs, job_client, metrics)."""

    async def part(runtime: RuntimeDep) -> Any:
        return getattr(runtime, name)

    part.__name__ = f"get_{name}"
    return part


CatalogDep = Annotated[Catalog, Depends(_runtime_part("catalog"))]
JobStoreDep = Annotated[JobStore, Depends(_runtime_part("jobs"))]
JobClientDep = Annotated[JobClient, Depends(_runtime_part("job_client"))]
MetricsDep = Annotated[Metrics, Depends(_runtime_part("metrics"))]
