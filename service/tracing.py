"""OpenTelemetry tracing: on when the standard ``OTEL_*`` variables ask for it, off and free
when they do not.

Each process's entry point calls `configure` (``promptserve serve`` and ``worker``, each API
worker, the engine process, each job process). Tracing is on when ``OTEL_TRACES_EXPORTER``
names an exporter other than ``none``, or, with that variable unset, when
``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set;
``OTEL_SDK_DISABLED=true`` turns it off whatever else is set. The SDK reads the rest itself
(``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, the sampler, the batch processor, the
OTLP endpoint and headers). Off, no ``opentelemetry`` module is imported: `span` returns one
shared no-op object and `record` returns at once, so an instrumented step costs a function call.

A request's trace crosses processes as a W3C ``traceparent``: in the engine socket's message
header (`current_traceparent` in the API worker, `continued` in the engine process) and in a
job's spec (the job process's root span is a child of the ``/adapt`` request's span).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any

SWITCHES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
EXPORTERS = ("otlp", "console")
EXTRA = "pip install 'promptserve[tracing]'"
UNTRACED_URLS = "/health/live,/health/ready,/metrics"  # probes and scrapes make no traces

Attributes = Mapping[str, str | int | float | bool]

_tracer: Any = None  # an opentelemetry Tracer while tracing is on
_provider: Any = None  # its TracerProvider


class TracingUnavailableError(RuntimeError):
    """The environment asks for tracing that cannot run (a package missing, an unknown
    exporter); the message is one line for the start-up error."""


class _NoSpan:
    """What `span` gives while tracing is off: enters, exits and takes attributes, doing
    nothing."""

    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set_attribute(self, key: str, value: object) -> None:
        return None


NO_SPAN = _NoSpan()


def requested(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment turns tracing on (see the module docstring)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return any(environ.get(name, "").strip() for name in SWITCHES)


def enabled() -> bool:
    return _tracer is not None


def configure(process: str) -> bool:
    """Turn tracing on in this process when the environment asks for it (once; later calls
    return the state). `process` names the process in the ``promptserve.process`` resource
    attribute (``api``, ``engine``, ``job``, ``worker``). Raises TracingUnavailableError."""
    if _tracer is not None or not requested():
        return enabled()
    try:
        import opentelemetry.instrumentation.fastapi  # noqa: F401  (used by instrument_app)
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError as exc:
        raise TracingUnavailableError(
            f"OTEL_* variables turn tracing on but {exc.name} is not installed: {EXTRA}"
        ) from None
    attributes: dict[str, str] = {"promptserve.process": process}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = "promptserve"
    provider = TracerProvider(resource=Resource.create(attributes))
    for processor in _processors():
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    enable(provider)
    return True


def _processors() -> list[Any]:
    """A batch processor per exporter that ``OTEL_TRACES_EXPORTER`` names (default: otlp)."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")]
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise TracingUnavailableError(
            f"OTEL_TRACES_EXPORTER={','.join(unknown)} is not supported; use one of "
            f"{', '.join(EXPORTERS)} or none"
        )
    processors = []
    for name in names:
        if name == "console":
            processors.append(BatchSpanProcessor(ConsoleSpanExporter()))
            continue
        protocol = os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        )
        if protocol != "http/protobuf":
            raise TracingUnavailableError(
                f"OTLP protocol {protocol!r} is not supported; use http/protobuf"
            )
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise TracingUnavailableError(
                f"OTEL_* variables turn tracing on but {exc.name} is not installed: {EXTRA}"
            ) from None
        processors.append(BatchSpanProcessor(OTLPSpanExporter()))
    return processors


def enable(provider: Any) -> None:
    """Trace with `provider` (an SDK TracerProvider) from now on; tests pass one that exports
    to memory."""
    global _tracer, _provider
    _provider = provider
    _tracer = provider.get_tracer("promptserve")


def disable() -> None:
    """Tracing off again (its provider is left as it is)."""
    global _tracer, _provider
    _tracer = _provider = None


def shutdown() -> None:
    """Export what is buffered and stop: a job process calls it before it exits."""
    if _provider is not None:
        _provider.shutdown()
    disable()


def instrument_app(app: Any) -> None:
    """The HTTP server spans of a FastAPI app (opentelemetry-instrumentation-fastapi)."""
    if _tracer is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, tracer_provider=_provider, excluded_urls=UNTRACED_URLS)


def span(name: str, attributes: Attributes | None = None) -> AbstractContextManager[Any]:
    """A span around a block, child of the current one; `NO_SPAN` while tracing is off."""
    if _tracer is None:
        return NO_SPAN
    return _tracer.start_as_current_span(name, attributes=attributes)  # type: ignore[no-any-return]


def record(name: str, start_ns: int, end_ns: int, attributes: Attributes | None = None) -> None:
    """A span that already happened (epoch nanoseconds, `time.time_ns`), child of the current
    one: the batcher measures a request's wait in its own task and records it here."""
    if _tracer is None:
        return
    _tracer.start_span(name, start_time=start_ns, attributes=attributes).end(end_time=end_ns)


def current_traceparent() -> str | None:
    """The current span as a W3C ``traceparent`` header; None while tracing is off."""
    if _tracer is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


def root_span(
    name: str, traceparent: str | None, attributes: Attributes | None = None
) -> AbstractContextManager[Any]:
    """A process's first span: a child of the span `traceparent` names (made in another
    process), or a new trace without one."""
    if _tracer is None:
        return NO_SPAN
    return _tracer.start_as_current_span(  # type: ignore[no-any-return]
        name, context=_extract(traceparent), attributes=attributes
    )


@contextlib.contextmanager
def _attached(traceparent: str) -> Iterator[None]:
    from opentelemetry import context

    token = context.attach(_extract(traceparent))
    try:
        yield
    finally:
        context.detach(token)


def continued(traceparent: str | None) -> AbstractContextManager[Any]:
    """Spans made in the block join the trace of `traceparent` (another process's span)."""
    if _tracer is None or not traceparent:
        return NO_SPAN
    return _attached(traceparent)


def _extract(traceparent: str | None) -> Any:
    from opentelemetry.context import Context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if not traceparent:
        return Context()
    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})
