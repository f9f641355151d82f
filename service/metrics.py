"""Prometheus metrics on prometheus-client: the service's families and their exposition.

Two registries per process. `Metrics.http` holds what every API process counts for itself (HTTP
requests by route, method and status and their latency, admission and limit rejects by reason,
requests by classifier); with ``serve --workers N`` each API worker sends a snapshot of it
(`http_state`) to the engine process every second, and the engine's exposition sums them
series by series (`SummedHttp`). `Metrics.registry` holds the rest: engine batch sizes, images
classified, the engine thread's CPU seconds, gauges read when scraped (added by their owners:
the batcher's queue depth, loaded classifiers and readiness, the jobs, the GPUs, the API workers
reporting), and the client's process, platform and gc collectors. Routes are labelled by their
template (``/classifiers/{name}``), never by the raw path, so label cardinality stays bounded.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from promptserve.models.devices import DeviceChoice
    from promptserve.models.precision_gate import GateResult

# a `_created` timestamp means nothing for a series summed over processes, and costs a line a series
disable_created_metrics()

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# the error codes of the answers that refuse a request for a limit (408, 413, 429): the reasons of
# promptserve_rejected_requests_total; any other code there is "other"
REJECT_REASONS = frozenset(
    {
        "overloaded",  # admission: requests or body bytes in flight
        "queue_full",  # the batcher's queue
        "too_many_jobs",  # queued tuning jobs
        "body_too_large",
        "too_many_images",
        "image_too_large",  # the pixel limit
        "body_timeout",  # a body that stalled or took too long (BODY_* settings)
    }
)
OTHER = "other"

State = list[list[Any]]  # http_state(): [[family, type, help, [[sample, labels, value], ...]], ...]


class Metrics:
    """The service's metric families; updated from the event loop and the engine thread."""

    def __init__(self) -> None:
        self.http = CollectorRegistry()
        self.requests = Counter(
            "promptserve_http_requests_total",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=self.http,
        )
        self.latency = Histogram(
            "promptserve_http_request_duration_seconds",
            "HTTP request latency by route, in seconds.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.http,
        )
        self.rejected = Counter(
            "promptserve_rejected_requests_total",
            "Requests refused for a limit (408, 413, 429) by reason: the error code answered.",
            ["reason"],
            registry=self.http,
        )
        self.classifier_requests = Counter(
            "promptserve_classifier_requests_total",
            "Classify and embedding requests by the classifier they name (unknown names: other).",
            ["classifier"],
            registry=self.http,
        )
        self.registry = CollectorRegistry()
        self.worker_states: Callable[[], Sequence[State]] = list  # set by the engine process
        self.registry.register(SummedHttp(self))
        self.batch_size = Histogram(
            "promptserve_batch_size",
            "Images per engine call.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter(
            "promptserve_images_total", "Images classified.", registry=self.registry
        )
        self.engine_seconds = Counter(
            "promptserve_engine_cpu_seconds_total",
            "CPU seconds of the thread running engine calls (all of the engine's CPU when "
            "onnx_threads is 1; with more, ONNX Runtime's own pool threads are not in it).",
            registry=self.registry,
        )
        self.read_at_scrape = ReadAtScrape()
        self.registry.register(self.read_at_scrape)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        # label children by label values, so a request costs a dict lookup, not labels()
        self._routes: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._classifiers: dict[str | None, Any] = {}

    def add_gauge(
        self, name: str, help: str, read: Callable[[], float], kind: str = "gauge"
    ) -> None:
        """A value read when scraped; `kind` "counter" for a total kept elsewhere."""
        self.read_at_scrape.add(name, help, kind, lambda: [({}, read())])

    def add_info(self, name: str, help: str, labels: dict[str, str]) -> None:
        """A constant 1 whose labels carry the information (Prometheus's info idiom)."""
        self.read_at_scrape.add(name, help, "gauge", lambda: [(labels, 1.0)])

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        children = self._routes.get((route, method, status))
        if children is None:
            children = self.requests.labels(route, method, str(status)), self.latency.labels(route)
            self._routes[(route, method, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_reject(self, code: str) -> None:
        self.rejected.labels(code if code in REJECT_REASONS else OTHER).inc()

    def observe_classifier(self, name: str | None) -> None:
        """A request naming classifier `name`: one that exists in the store (None: unknown)."""
        child = self._classifiers.get(name)
        if child is None:
            child = self._classifiers[name] = self.classifier_requests.labels(name or OTHER)
        child.inc()

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)
        self.images.inc(size)

    def observe_engine(self, cpu_seconds: float) -> None:
        self.engine_seconds.inc(cpu_seconds)

    def http_state(self) -> State:
        """This process's HTTP families as JSON-ready data (summed by `SummedHttp`)."""
        return [
            [f.name, f.type, f.documentation, [[s.name, s.labels, s.value] for s in f.samples]]
            for f in self.http.collect()
        ]

    def expose(self) -> str:
        """The text exposition (format 0.0.4); it reads the scrape-time gauges (a job store
        query among them), so call it off the event loop."""
        return generate_latest(self.registry).decode()


class SummedHttp(Collector):
    """The HTTP families of this process plus those the API workers reported, summed."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return sum_states([self.metrics.http_state(), *self.metrics.worker_states()])


def sum_states(states: Sequence[State]) -> list[Metric]:
    """Families summed series by series over `states` (`Metrics.http_state` of processes):
    counters and histogram buckets, sums and counts all add up."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for state in states:
        for name, kind, help, samples in state:
            if name not in families:
                families[name], values[name] = Metric(name, help, kind), {}
            series = values[name]
            for sample, labels, value in samples:
                key = (sample, tuple(labels.items()))
                series[key] = series.get(key, 0.0) + value
    for name, family in families.items():
        for (sample, labels), value in values[name].items():
            family.add_sample(sample, dict(labels), value)
    return list(families.values())


Read = Callable[[], list[tuple[dict[str, str], float]]]  # -> (labels, value) per series


class ReadAtScrape(Collector):
    """Families whose values their owners hold elsewhere, read at each scrape."""

    def __init__(self) -> None:
        self.families: list[tuple[str, str, str, Read]] = []

    def add(self, name: str, help: str, kind: str, read: Read) -> None:
        self.families.append((name, help, kind, read))

    def collect(self) -> Iterable[Metric]:
        for name, help, kind, read in self.families:
            family = Metric(name.removesuffix("_total") if kind == "counter" else name, help, kind)
            for labels, value in read():
                family.add_sample(name, labels, float(value))
            yield family


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


class GateHolder(Protocol):
    """What the precision gate metrics read (`ClassifierCache` is one)."""

    @property
    def gate_runs(self) -> Mapping[tuple[str, str], int]: ...  # (precision, outcome) -> runs

    def precision_gates(self) -> list[tuple[str, str, GateResult]]: ...


def add_precision_metrics(metrics: Metrics, store: GateHolder) -> None:
    """The accuracy gates of reduced engine precisions: runs by outcome, and each loaded
    classifier's figures (labelled with the precision that serves it)."""
    metrics.read_at_scrape.add(
        "promptserve_precision_gate_total",
        "Accuracy gates run by precision and outcome (passed, or fallback to float32).",
        "counter",
        lambda: [({"precision": p, "outcome": o}, n) for (p, o), n in store.gate_runs.items()],
    )
    for field, help in (
        ("agreement", "Top-1 agreement with float32 on the calibration set"),
        ("min_cosine", "Smallest embedding cosine to float32 on the calibration set"),
    ):
        metrics.read_at_scrape.add(
            f"promptserve_precision_gate_{field}",
            f"{help}, per loaded classifier on a reduced precision.",
            "gauge",
            functools.partial(_gate_series, store, field),
        )


def _gate_series(store: GateHolder, field: str) -> list[tuple[dict[str, str], float]]:
    return [
        (
            {"classifier": name, "version": version, "precision": r.precision, "served": r.served},
            getattr(r, field),
        )
        for name, version, r in store.precision_gates()
    ]


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
