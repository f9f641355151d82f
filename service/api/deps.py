"""Request dependencies: one `Annotated` alias per resource a route may need (the runtime, its
settings, the classifier catalog, the job store and client, the metrics), and the API key check."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from promptserve.service.catalog import Catalog
from promptserve.service.errors import UnauthorizedError
from promptserve.service.jobs.client import JobClient
from promptserve.service.jobs.store import JobStore
from promptserve.service.metrics import Metrics
from promptserve.service.runtime import Runtime
from promptserve.service.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="the PROMPTSERVE_API_KEY, when one is set")


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_app_settings(runtime: RuntimeDep) -> Settings:
    """The settings the app was created with (not necessarily the environment's)."""
    return runtime.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def _runtime_part(name: str) -> Callable[[Runtime], Any]:
    """A dependency that returns one part of the runtime (catalog, jobs, job_client, metrics)."""

    def part(runtime: RuntimeDep) -> Any:
        return getattr(runtime, name)

    part.__name__ = f"get_{name}"
    return part


CatalogDep = Annotated[Catalog, Depends(_runtime_part("catalog"))]
JobStoreDep = Annotated[JobStore, Depends(_runtime_part("jobs"))]
JobClientDep = Annotated[JobClient, Depends(_runtime_part("job_client"))]
MetricsDep = Annotated[Metrics, Depends(_runtime_part("metrics"))]


def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless ``Authorization: Bearer <key>`` matches the configured key (if any)."""
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials is not None else b""
    if not secrets.compare_digest(given, expected):  # constant time in the key's content
        raise UnauthorizedError(
            "missing or wrong API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
