"""Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from service.api.deps import MetricsDep, require_api_key
from service.metrics import CONTENT_TYPE

router = APIRouter(tags=["metrics"], dependencies=[Depends(require_api_key)])


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(metrics: MetricsDep) -> PlainTextResponse:
    """Request counts and latency by route, batch sizes, queue depth (text format 0.0.4)."""
    return PlainTextResponse(metrics.expose(), media_type=CONTENT_TYPE)
