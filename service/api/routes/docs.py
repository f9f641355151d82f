"""The API documentation behind the API key: with ``PROMPTSERVE_API_KEY`` set, the app is built
without FastAPI's open ``/docs``, ``/redoc`` and ``/openapi.json``, and these serve them instead,
for requests that carry the key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse

from promptserve.service.api.auth import ANY_KEY

router = APIRouter(include_in_schema=False, dependencies=[Depends(ANY_KEY)])


@router.get("/openapi.json")
async def openapi(request: Request) -> dict[str, Any]:
    app = request.app
    if app.openapi_schema is None:
        app.openapi_schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
    return dict(app.openapi_schema)


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title="promptserve")


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    return get_redoc_html(openapi_url="/openapi.json", title="promptserve")
