"""HTTP at the edges of the routes: HEAD and content codings.

- **HEAD** answers like GET without the body, on every GET route (health and metrics included:
  load balancers and uptime checks probe with HEAD). FastAPI's routes list GET only.
- **Content-Encoding**: bodies are read as sent; a request declaring a coding other than
  ``identity`` (``gzip``, ``br``, ...) is a 415 naming it, not a 400 from a parser that read
  compressed bytes as JSON or multipart.

The trailing-slash redirect is `service.api.handlers.slash_redirect` (it answers a 404).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from promptserve.service.api.handlers import error_response, request_id_of

IDENTITY = {"", "identity"}


class EdgesMiddleware:
    """HEAD run as GET with the body dropped; a coded request body refused with a 415."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        coding = _content_coding(scope)
        if coding not in IDENTITY:
            message = f"Content-Encoding {coding!r} is not supported: send the body uncompressed"
            response = error_response(
                415, "unsupported_media_type", message, request_id=request_id_of(scope)
            )
            response.headers["Connection"] = "close"  # the unread body must not be parsed
            await response(scope, receive, send)
            return
        if scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)


def _content_coding(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"content-encoding":
            return value.decode("latin-1").strip().lower()
    return ""
