"""Process logging, set up once by each process's entry point with `configure_logging`.

Every process logs the same lines: ``promptserve serve`` and each API worker and the engine
process of ``serve --workers N``, ``promptserve worker`` (a job host), each job process, and
the training commands (``promptserve train`` and friends). A line names its process
(`multiprocessing`'s process name: ``MainProcess``, ``promptserve-engine``,
``promptserve-<job id>``, uvicorn's ``SpawnProcess-<n>``), so the interleaved output of a host
reads apart, and the request it is about (`LOG_CONTEXT`: the id of the HTTP request being
answered, of the classify call in the engine, of the ``POST /adapt`` that made a job).

Two formats: ``text`` (one readable line) and ``json`` (one JSON object a line, by
python-json-logger). The setup lives here, not in the service, because the training commands
use it too and imports flow service -> training.
"""

from __future__ import annotations

import contextvars
import logging
import os
from dataclasses import dataclass
from typing import Literal

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

OWN_PACKAGES = ("promptserve", "uvicorn")  # uvicorn's own lines pass through our handler
LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s [%(request_id)s]: %(message)s"
JSON_FIELDS = "%(levelname)s %(name)s %(processName)s %(message)s %(request_id)s"
JSON_NAMES = {"levelname": "level", "name": "logger", "processName": "process"}
NO_ID = "-"  # a text line's request id outside any request


@dataclass(slots=True)
class LogContext:
    """What the lines logged while handling one request say about it. The classify handler
    fills in `classifier` and `version` once it knows them; the access log reads them."""

    request_id: str
    classifier: str | None = None
    version: str | None = None


LOG_CONTEXT: contextvars.ContextVar[LogContext | None] = contextvars.ContextVar(
    "promptserve_log_context", default=None
)


def current_request_id() -> str | None:
    context = LOG_CONTEXT.get()
    return None if context is None else context.request_id


class ContextFilter(logging.Filter):
    """Adds `request_id` (and `classifier` / `version` when known) to every record: one
    context variable read. A record that names its own (``extra={"request_id": ...}``, the job
    runner's lines about one job) keeps it."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = LOG_CONTEXT.get()
        if not hasattr(record, "request_id"):
            record.request_id = context.request_id if context is not None else None
        if context is not None:
            if context.classifier is not None and not hasattr(record, "classifier"):
                record.classifier = context.classifier
            if context.version is not None and not hasattr(record, "version"):
                record.version = context.version
        return True


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.__dict__.get("request_id") is None:
            record.request_id = NO_ID
        return super().format(record)


def make_formatter(log_format: LogFormat) -> logging.Formatter:
    if log_format == "text":
        return TextFormatter(TEXT_FORMAT)
    # uvicorn adds a coloured copy of some messages: the JSON line needs only one
    reserved = [*RESERVED_ATTRS, "color_message", "taskName"]
    return JsonFormatter(
        JSON_FIELDS, rename_fields=JSON_NAMES, reserved_attrs=reserved, timestamp="time"
    )


class _OurHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `configure_logging` installs (and replaces when called again)."""


def env_log_format() -> LogFormat:
    """``PROMPTSERVE_LOG_FORMAT`` for the commands without service settings (training's)."""
    return "json" if os.environ.get("PROMPTSERVE_LOG_FORMAT", "").lower() == "json" else "text"


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """Our packages (and uvicorn's) at `level`; everything else (exporters, ONNX passes) at
    WARNING; one handler on stderr with `log_format` and the context filter. Called again (a
    test, a second entry point in one process), it replaces its own handler and leaves others
    (pytest's) alone."""
    handler = _OurHandler()
    handler.setFormatter(make_formatter(log_format))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OurHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for package in OWN_PACKAGES:
        logging.getLogger(package).setLevel(level.upper())
