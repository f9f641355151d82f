"""Prometheus metrics, written in the text exposition format (version 0.0.4) by hand.

The families `Metrics` keeps: HTTP requests by route, method and status, and their latency by
route (summed over the API workers of ``serve --workers N``); engine batch sizes, images
classified and the engine thread's CPU seconds. Gauges read when scraped are added by their
owners: the batcher's queue depth, loaded classifiers and readiness, the jobs running and
queued (`service.runtime`), engines and loaded bytes (`add_store_gauges`), and the API workers
reporting (`service.remote.engine`). Routes are labelled by their template
(``/classifiers/{name}``), never by the raw path, so label cardinality stays bounded.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from promptserve.models.devices import DeviceChoice

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

Labels = tuple[tuple[str, str], ...]


def _labels(pairs: Sequence[Sequence[str]]) -> Labels:
    return tuple((str(k), str(v)) for k, v in pairs)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_labels(labels: Labels, extra: tuple[str, str] | None = None) -> str:
    pairs = [*labels, extra] if extra is not None else list(labels)
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


@dataclass
class Counter:
    name: str
    help: str
    values: dict[Labels, float] = field(default_factory=dict)

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def expose(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for labels, value in sorted(self.values.items()):
            lines.append(f"{self.name}{_format_labels(labels)} {_number(value)}")
        return lines


@dataclass
class _Series:
    counts: list[int]  # per bucket, not cumulative; the last one is +Inf
    total: float = 0.0
    count: int = 0


@dataclass
class Histogram:
    name: str
    help: str
    buckets: Sequence[float]
    series: dict[Labels, _Series] = field(default_factory=dict)

    def observe(self, value: float, labels: Labels = ()) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = _Series([0] * (len(self.buckets) + 1))
        series.counts[bisect.bisect_left(self.buckets, value)] += 1
        series.total += value
        series.count += 1

    def expose(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for labels, series in sorted(self.series.items()):
            cumulative = 0
            for bound, count in zip([*self.buckets, float("inf")], series.counts, strict=True):
                cumulative += count
                le = _format_labels(labels, ("le", _number(bound)))
                lines.append(f"{self.name}_bucket{le} {cumulative}")
            lines.append(f"{self.name}_sum{_format_labels(labels)} {_number(series.total)}")
            lines.append(f"{self.name}_count{_format_labels(labels)} {series.count}")
        return lines


@dataclass
class Gauge:
    """A value read when scraped; `kind` "counter" for a total kept elsewhere, "gauge" with
    constant `labels` and value 1 for an info metric."""

    name: str
    help: str
    read: Callable[[], float]
    kind: str = "gauge"
    labels: Labels = ()

    def expose(self) -> list[str]:
        return [
            f"# HELP {self.name} {self.help}",
            f"# TYPE {self.name} {self.kind}",
            f"{self.name}{_format_labels(self.labels)} {_number(self.read())}",
        ]


class Metrics:
    """The service's metric families; updated from the event loop and the engine thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = Counter(
            "promptserve_http_requests_total", "HTTP requests by route, method and status."
        )
        self.latency = Histogram(
            "promptserve_http_request_duration_seconds",
            "HTTP request latency by route, in seconds.",
            LATENCY_BUCKETS,
        )
        self.batch_size = Histogram(
            "promptserve_batch_size", "Images per engine call.", BATCH_BUCKETS
        )
        self.images = Counter("promptserve_images_total", "Images classified.")
        self.images.inc(amount=0)  # exposed as 0 before the first batch
        self.engine_seconds = Counter(
            "promptserve_engine_cpu_seconds_total",
            "CPU seconds of the thread running engine calls (all of the engine's CPU when "
            "onnx_threads is 1; with more, ONNX Runtime's own pool threads are not in it).",
        )
        self.engine_seconds.inc(amount=0)
        self.gauges: list[Gauge] = []

    def add_gauge(
        self, name: str, help: str, read: Callable[[], float], kind: str = "gauge"
    ) -> None:
        self.gauges.append(Gauge(name, help, read, kind))

    def add_info(self, name: str, help: str, labels: dict[str, str]) -> None:
        """A constant 1 whose labels carry the information (Prometheus's info idiom)."""
        self.gauges.append(Gauge(name, help, lambda: 1.0, labels=_labels(list(labels.items()))))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests.inc((("route", route), ("method", method), ("status", str(status))))
            self.latency.observe(seconds, (("route", route),))

    def observe_batch(self, size: int) -> None:
        with self._lock:
            self.batch_size.observe(size)
            self.images.inc(amount=size)

    def observe_engine(self, cpu_seconds: float) -> None:
        with self._lock:
            self.engine_seconds.inc(amount=cpu_seconds)

    def http_state(self) -> dict[str, Any]:
        """The HTTP families' values, as JSON-ready data (see `merge_http`)."""
        with self._lock:
            return {
                "requests": [[list(k), v] for k, v in self.requests.values.items()],
                "latency": [
                    [list(k), list(s.counts), s.total, s.count]
                    for k, s in self.latency.series.items()
                ],
            }

    def merge_http(self, states: Sequence[dict[str, Any]]) -> tuple[Counter, Histogram]:
        """This process's HTTP families plus `states` of other processes (`http_state`), summed
        series by series: what a scrape of a multi-process service shows."""
        requests = Counter(self.requests.name, self.requests.help)
        latency = Histogram(self.latency.name, self.latency.help, self.latency.buckets)
        for state in [self.http_state(), *states]:
            for labels, value in state["requests"]:
                requests.inc(_labels(labels), value)
            for labels, counts, total, count in state["latency"]:
                key = _labels(labels)
                series = latency.series.setdefault(key, _Series([0] * len(counts)))
                series.counts = [a + b for a, b in zip(series.counts, counts, strict=True)]
                series.total += total
                series.count += count
        return requests, latency

    def expose(self, http_states: Sequence[dict[str, Any]] | None = None) -> str:
        """The text exposition; with `http_states` (other processes' `http_state`), the HTTP
        families are summed over this process and them."""
        requests, latency = self.requests, self.latency
        if http_states is not None:
            requests, latency = self.merge_http(http_states)
        with self._lock:
            families: list[Counter | Histogram | Gauge] = [
                requests,
                latency,
                self.batch_size,
                self.images,
                self.engine_seconds,
                *self.gauges,
            ]
            lines = [line for family in families for line in family.expose()]
        return "\n".join(lines) + "\n"


class EngineHolder(Protocol):
    """What the store gauges read (`service.classify.cache.ClassifierCache` is one)."""

    def engine_count(self) -> int: ...

    def loaded_bytes(self) -> int: ...


def add_store_gauges(metrics: Metrics, store: EngineHolder) -> None:
    """Engines open and the memory of loaded classifiers' own tensors, read when scraped."""
    metrics.add_gauge(
        "promptserve_engines",
        "Engines the loaded classifiers run on (a shared backbone graph counts once).",
        lambda: float(store.engine_count()),
    )
    metrics.add_gauge(
        "promptserve_loaded_classifier_bytes",
        "Bytes of the loaded classifiers' own tensors (class embeddings), engines excluded.",
        lambda: float(store.loaded_bytes()),
    )


def add_device_metrics(metrics: Metrics, choice: DeviceChoice) -> None:
    """Which device and ONNX Runtime providers the engine runs on (and why `auto` passed over
    CUDA), and how many images the device decoder handed back to the CPU path."""
    from promptserve.service.classify.device_decode import decode_fallbacks

    metrics.add_info(
        "promptserve_device_info",
        "The engine's device and ONNX Runtime providers, as chosen at start-up.",
        {
            "asked": choice.asked,
            "device": choice.device,
            "providers": ",".join(choice.providers),
            "reason": choice.reason,
        },
    )
    metrics.add_gauge(
        "promptserve_device_decode_fallbacks_total",
        "Requests whose JPEGs the device decoder refused, decoded on the CPU instead.",
        lambda: float(decode_fallbacks()),
        kind="counter",
    )
