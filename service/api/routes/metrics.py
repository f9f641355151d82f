"""Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from promptserve.service.api.auth import METRICS
from promptserve.service.api.deps import RuntimeDep
from promptserve.service.metrics import CONTENT_TYPE

router = APIRouter(tags=["metrics"], dependencies=[Depends(METRICS)])


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(runtime: RuntimeDep) -> PlainTextResponse:
    """Request counts and latency by route, rejects by reason, requests by classifier, batch
    sizes, queue depth, jobs, process and GPU figures (text format 0.0.4).

    With several API worker processes (``serve --workers N``) the HTTP families are the sum
    over the workers (each reports every second) and the engine families are the one engine
    process's, whichever worker answers the scrape.
    """
    return PlainTextResponse(await runtime.engine.expose_metrics(), media_type=CONTENT_TYPE)
