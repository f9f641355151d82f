"""The playground: one static page at ``/`` (HTML, CSS, plain JavaScript shipped in the package).

The page is public and holds no data: everything it shows comes from the public API, which it
calls from the browser with the API key typed into it, so it doubles as a worked example of the
API. The files are read once from the package and served with their media types.
"""

from __future__ import annotations

import functools
from importlib import resources

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import HTMLResponse, Response

from promptserve.service.api.auth import PUBLIC

PAGE = "playground.html"
ASSETS = {"playground.css": "text/css", "playground.js": "text/javascript"}

# The page takes the API key, so it must not run anything but its own files, be framed by
# another site (clickjacking) or have a file sniffed into another type. Its script sets
# element styles through the CSSOM and previews uploads from blob: URLs, both allowed here.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(include_in_schema=False, dependencies=[Depends(PUBLIC)])


@functools.cache
def read_static(name: str) -> bytes:
    """A file of ``service/static``, by a name from PAGE or ASSETS (never a request's path)."""
    return (resources.files("promptserve.service") / "static" / name).read_bytes()


@router.get("/")
async def playground() -> HTMLResponse:
    return HTMLResponse(read_static(PAGE), headers=HEADERS)


@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    if name not in ASSETS:
        raise HTTPException(404, f"no static file {name!r}")
    content = read_static(name)
    return Response(content, media_type=f"{ASSETS[name]}; charset=utf-8", headers=HEADERS)
