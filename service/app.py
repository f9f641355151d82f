"""The application factory: `create_app(settings)`, with a lifespan that owns the runtime."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

from fastapi import FastAPI

from promptserve.service import tracing
from promptserve.service.api.edges import EdgesMiddleware
from promptserve.service.api.handlers import install_error_handlers
from promptserve.service.api.middleware import (
    AdmissionMiddleware,
    BodyLimitMiddleware,
    RequestIdMiddleware,
)
from promptserve.service.api.request_metrics import MetricsMiddleware
from promptserve.service.api.routes import (
    classifiers,
    classify,
    docs,
    embeddings,
    health,
    jobs,
    metrics,
    playground,
)
from promptserve.service.api.schemas.common import error_responses
from promptserve.service.api.uploads import BodyPace
from promptserve.service.logs import configure_logging
from promptserve.service.remote.worker import load_settings
from promptserve.service.runtime import Runtime
from promptserve.service.settings import Settings, get_settings

log = logging.getLogger(__name__)

API_PREFIX = "/v1"

DESCRIPTION = """Classify images with prompt-tuned CLIP classifiers from a classifier store.

The API lives under `/v1`; the unversioned paths (`/classify`, `/adapt`, `/jobs`,
`/classifiers`) still answer as before, deprecated (`Deprecation: true` and a
`Link: </v1/...>; rel="successor-version"` header). Every error answers
`{"error": {"code": ..., "message": ..., "request_id": ...}}` (a 422 adds `fields`, the path of
each problem), and every response carries `X-Request-ID`. When keys are configured
(`PROMPTSERVE_API_KEYS_FILE`, `PROMPTSERVE_API_KEY`), every route except `/health/*` and the
playground page (`/`, `/static/*`, which hold no data) needs `Authorization: Bearer <key>`,
these docs included: 401 without a known key, 403 when the key lacks the route's scope
(`classify`, `tune`, `admin`, `metrics`) or its classifier prefix. Beyond the in-flight budget
a request is answered 429 with `Retry-After` before its body is read; a body that stalls is
answered 408 `body_timeout`.
"""


def service_version() -> str:
    """The installed package's version (the OpenAPI document's `info.version`)."""
    try:
        return package_version("promptserve")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new application over `settings` (the environment's when None)."""
    settings = settings if settings is not None else get_settings()
    # an API worker of `serve --workers N` scores through the engine process instead
    runtime = Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("serving store %s on %s with %s", settings.store, runtime.device, settings.engine)
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    open_docs = not runtime.keys.enabled  # with keys, the docs need one like every route
    app = FastAPI(
        title="promptserve",
        version=service_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        redirect_slashes=False,  # the 404 handler redirects, without the Host header
        docs_url="/docs" if open_docs else None,
        redoc_url="/redoc" if open_docs else None,
        openapi_url="/openapi.json" if open_docs else None,
    )
    app.state.runtime = runtime
    # one handler per route, under /v1 and (deprecated, as before) without the prefix
    # (a 422 answers the ErrorPublic body, not FastAPI's own validation schema)
    invalid = error_responses(422)
    app.include_router(classify.v1_router, prefix=API_PREFIX, responses=invalid)
    app.include_router(classifiers.v1_router, prefix=API_PREFIX, responses=invalid)
    app.include_router(embeddings.router, prefix=API_PREFIX, responses=invalid)
    app.include_router(jobs.router, prefix=API_PREFIX, responses=invalid)
    app.include_router(classify.router, responses=invalid)
    app.include_router(classifiers.router, responses=invalid)
    app.include_router(jobs.router, deprecated=True, responses=invalid)
    for module in (health, metrics, playground):  # operational: not versioned
        app.include_router(module.router)
    if not open_docs:
        app.include_router(docs.router)
    install_error_handlers(app)
    app.add_middleware(EdgesMiddleware)  # innermost: HEAD as GET, a coded body refused
    # added last = outermost: the metrics see every request, 429s from admission and 413s from
    # the body limit included; admission runs before the body is read
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(
        AdmissionMiddleware,
        max_requests=settings.max_inflight_requests,
        max_bytes=settings.max_inflight_bytes,
        body_limit=settings.max_body_bytes,
        retry_after_s=settings.retry_after_s,
        pace=BodyPace(settings.body_min_rate, settings.body_rate_window_s, settings.body_timeout_s),
    )
    app.add_middleware(MetricsMiddleware, metrics=runtime.metrics, routes=lambda: app.routes)
    # outermost: every answer carries the id, and the access log sees every answer
    app.add_middleware(RequestIdMiddleware, access_log=settings.access_log)
    tracing.instrument_app(app)  # while tracing is on: a server span around all of it
    return app


def create_worker_app() -> FastAPI:
    """The application of one API worker process of ``serve --workers N`` (uvicorn's factory);
    the supervisor hands it its settings (`service.remote.worker.load_settings`)."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    tracing.configure("api")
    return create_app(settings)
