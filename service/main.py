"""The ASGI application for ``uvicorn service.main:app`` (settings from the environment)."""

from promptserve.service.app import create_app

app = create_app()
