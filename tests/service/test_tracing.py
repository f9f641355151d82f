"""OpenTelemetry tracing: the spans of a classify, of an open-vocabulary request and of a job,
exported to memory by the SDK's own exporter; the engine process's spans joining the API
worker's trace (``serve --workers 2``, console exporter); and tracing off: nothing of
opentelemetry imported, the span helper a no-op, a clear start-up error when the OTEL_*
variables ask for tracing that cannot run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from promptserve.service import tracing
from promptserve.service.jobs.process import run_job
from promptserve.service.jobs.spec import JobSpec
from promptserve.service.jobs.store import JobStore
from promptserve.training.api import TrainRequest
from tests.service.helpers import ClientFactory, b64, png_bytes
from tests.service.jobs.helpers import job_launch, json_body, post_json
from tests.service.servers import copy_store, start_server, stop_server

REPO = Path(__file__).resolve().parents[2]
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"  # W3C's example
CLASSIFY_STEPS = {"decode", "batch_wait", "engine_call", "score"}


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, every span kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    yield exporter
    tracing.disable()
    provider.shutdown()


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


def ancestors(span: ReadableSpan, spans: tuple[ReadableSpan, ...]) -> list[str]:
    """The names of `span`'s parents, nearest first."""
    index = {s.context.span_id: s for s in spans}
    names = []
    while span.parent is not None and span.parent.span_id in index:
        span = index[span.parent.span_id]
        names.append(span.name)
    return names


# --- in process: the classify path and the job link ----------------------------------------


@pytest.mark.anyio
async def test_a_classify_is_one_trace_of_its_steps(
    client_factory: ClientFactory, exported: InMemorySpanExporter
) -> None:
    async with client_factory() as (client, _):
        response = await client.post("/v1/classify", files=[("images", png_bytes())])
    assert response.status_code == 200, response.text
    spans = exported.get_finished_spans()
    server = [s for s in spans if s.kind == SpanKind.SERVER]
    assert [s.name for s in server] == ["POST /v1/classify"]
    named = by_name(spans)
    assert named.keys() >= CLASSIFY_STEPS
    assert {s.context.trace_id for s in spans} == {server[0].context.trace_id}
    for step in CLASSIFY_STEPS:
        assert ancestors(named[step], spans)[-1:] == ["POST /v1/classify"], step
    assert named["engine_call"].attributes["promptserve.batch.images"] == 1
    assert named["score"].attributes["promptserve.classifiers"] == "default@1"
    wait, call = named["batch_wait"], named["engine_call"]
    assert wait.end_time is not None
    assert call.start_time is not None
    assert wait.end_time <= call.start_time + 1  # the wait ends as the engine call begins
    assert "encode_labels" not in named  # the classifier's own classes: nothing encoded


@pytest.mark.anyio
async def test_new_labels_are_encoded_in_a_span_of_their_own(
    client_factory: ClientFactory, exported: InMemorySpanExporter
) -> None:
    async with client_factory() as (client, _):
        body = {"images": [b64(png_bytes())], "labels": ["red circle", "owl", "teapot"]}
        response = await client.post("/v1/classify", json=body)
    assert response.status_code == 200, response.text
    spans = exported.get_finished_spans()
    encode = by_name(spans)["encode_labels"]
    assert encode.attributes["promptserve.labels.new"] == 2
    assert ancestors(encode, spans)[-1] == "POST /v1/classify"


@pytest.mark.anyio
async def test_adapt_keeps_its_trace_in_the_job_spec(
    client_factory: ClientFactory, exported: InMemorySpanExporter
) -> None:
    async with client_factory(max_concurrent_jobs=0) as (client, runtime):
        response = await post_json(client, json_body(method="coop", shots=2, epochs=1))
        assert response.status_code == 202, response.text
        job = runtime.jobs.get(response.json()["id"])
    assert job is not None
    assert job.spec.traceparent is not None
    server = [s for s in exported.get_finished_spans() if s.kind == SpanKind.SERVER]
    _, trace_id, parent_id, _ = job.spec.traceparent.split("-")
    assert int(trace_id, 16) == server[0].context.trace_id
    assert int(parent_id, 16) == server[0].context.span_id


@pytest.mark.slow  # it trains (one epoch, tiny backbone)
def test_a_job_traces_its_phases_under_the_adapt_request(
    tmp_path: Path, exported: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # run_job sizes torch's thread pools for its own process: not this one's
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(torch, "set_num_interop_threads", lambda n: None)
    sigterm = signal.getsignal(signal.SIGTERM)
    jobs = JobStore(tmp_path / "jobs.db")
    train = TrainRequest(
        method="coop",
        data="synthetic:color-shape-base?n=2&size=32",
        store=tmp_path / "store",
        name="traced",
        backbone="tiny",
        shots=2,
        epochs=1,
        overrides={"batch_size": 32},
    )
    spec = JobSpec(train=train, data="demo", classes=["a", "b"], images=4, traceparent=TRACEPARENT)
    jobs.create(spec, fingerprint="traced")
    job = jobs.claim_next("thishost:1:aaaaaaaa", 60.0)
    assert job is not None
    try:
        run_job(job_launch(jobs, job, tmp_path, runner_pid=os.getppid()))
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    done = jobs.get(job.id)
    assert done is not None
    assert done.state == "succeeded", done.error
    spans = exported.get_finished_spans()
    named = by_name(spans)
    root = named["job"]
    assert root.context.trace_id == int(TRACEPARENT.split("-")[1], 16)  # /adapt's trace
    assert root.parent is not None
    assert root.parent.span_id == int(TRACEPARENT.split("-")[2], 16)
    assert root.attributes["promptserve.job"] == job.id
    for phase in ("load_data", "train", "score", "export", "publish"):
        assert ancestors(named[phase], spans) == ["job"], phase
    order = [s.name for s in sorted(spans, key=lambda s: s.start_time or 0) if s.name != "job"]
    assert order == ["load_data", "train", "score", "export", "publish"]


# --- off --------------------------------------------------------------------------------------

# FastAPI itself imports opentelemetry-api (its native telemetry, idle without a provider):
# tracing off, the service adds no opentelemetry module to those
OFF_PROBE = """
import sys
import fastapi
def otel():
    return {m for m in sys.modules if m.startswith("opentelemetry")}
fastapis = otel()
from promptserve.service import tracing
from promptserve.service.app import create_app
from promptserve.service.cli import tracing_problem
from promptserve.service.jobs import process
from promptserve.service.remote import engine, link
assert tracing_problem("api") is None
create_app()
assert not tracing.enabled()
assert tracing.span("decode") is tracing.NO_SPAN
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
assert tracing.root_span("job", PARENT) is tracing.NO_SPAN
assert tracing.continued(PARENT) is tracing.NO_SPAN
assert tracing.current_traceparent() is None
assert tracing.record("batch_wait", 1, 2) is None
with tracing.span("decode") as span:
    span.set_attribute("promptserve.images", 1)
print(sorted(otel() - fastapis))
EXTRA = ("opentelemetry.sdk", "opentelemetry.instrumentation", "opentelemetry.exporter")
print(sorted(m for m in otel() if m.startswith(EXTRA)))
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PROMPTSERVE_"))}
    return env | {"HF_HUB_OFFLINE": "1"} | extra


def test_off_the_service_imports_no_opentelemetry_and_spans_are_no_ops(tmp_path: Path) -> None:
    env = clean_env(PROMPTSERVE_STORE=str(tmp_path), OTEL_SERVICE_NAME="promptserve")
    done = subprocess.run(
        [sys.executable, "-c", OFF_PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[]", "[]"]


def test_off_the_span_helper_costs_a_function_call() -> None:
    assert not tracing.enabled()
    n = 100_000
    started = time.perf_counter()
    for _ in range(n):
        with tracing.span("decode"):
            pass
    per_span = (time.perf_counter() - started) / n
    started = time.perf_counter()
    for _ in range(n):
        with NullBlock():
            pass
    baseline = (time.perf_counter() - started) / n
    assert per_span < 4 * baseline + 1e-6  # a call and a shared object, nothing more


class NullBlock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


HIDE_EXTRA = """
import sys
HIDDEN = ("opentelemetry.sdk", "opentelemetry.exporter", "opentelemetry.instrumentation")
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.startswith(HIDDEN):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Hide())
"""


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
            "pip install 'promptserve[tracing]'",
        ),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER=zipkin is not supported"),
    ],
    ids=["package-missing", "unknown-exporter"],
)
def test_tracing_asked_for_but_unable_to_run_stops_the_start_up(
    tmp_path: Path, env: dict[str, str], needle: str
) -> None:
    # the tracing extra's packages hidden from the server, as if not installed
    (tmp_path / "hide" / "sitecustomize.py").parent.mkdir()
    (tmp_path / "hide" / "sitecustomize.py").write_text(HIDE_EXTRA)
    extra = {"PYTHONPATH": str(tmp_path / "hide")} if "OTEL_EXPORTER_OTLP_ENDPOINT" in env else {}
    command = [sys.executable, "-m", "promptserve.service.cli", "serve", "--store", str(tmp_path)]
    done = subprocess.run(
        command, env=clean_env(**env, **extra), capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("promptserve serve: ")
    assert needle in lines[0]


# --- serve --workers 2: the engine process joins the API worker's trace ---------------------


def console_spans(log: str) -> list[dict[str, Any]]:
    """The spans the console exporter wrote into a server's log (one JSON object each)."""
    decoder, spans, at = json.JSONDecoder(), [], 0
    while (at := log.find('{\n    "name"', at)) != -1:
        span, end = decoder.raw_decode(log, at)
        spans.append(span)
        at = end
    return spans


@pytest.mark.slow
def test_engine_process_spans_join_the_api_workers_trace(
    tmp_path: Path, template_store: Path
) -> None:
    store = copy_store(template_store, tmp_path / "store")
    env = {
        "PROMPTSERVE_WORKERS": "2",
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    server = start_server(store, tmp_path / "server.log", timeout=300, **env)
    try:
        response = httpx.post(
            f"{server.url}/v1/classify", files=[("images", png_bytes())], timeout=60
        )
        assert response.status_code == 200, response.text
    finally:
        stop_server(server)  # the processes export what they hold as they stop
    spans = console_spans(server.log.read_text())
    servers = [s for s in spans if s["kind"] == "SpanKind.SERVER"]
    assert [s["name"] for s in servers] == ["POST /v1/classify"], server.log.read_text()[-3000:]
    trace_id = servers[0]["context"]["trace_id"]
    in_trace = {s["name"]: s for s in spans if s["context"]["trace_id"] == trace_id}
    assert in_trace.keys() >= CLASSIFY_STEPS
    process = {
        name: in_trace[name]["resource"]["attributes"]["promptserve.process"] for name in in_trace
    }
    assert process["POST /v1/classify"] == process["decode"] == "api"
    assert process["batch_wait"] == process["engine_call"] == process["score"] == "engine"
