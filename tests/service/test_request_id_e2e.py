"""One request id across real processes: ``promptserve serve --workers 2`` with JSON lines.
A classify request's id is in its answer, in the API worker's access line and in a line the
engine process writes while scoring it; a ``POST /adapt`` request's id is in the job's record
and events, in the runner's line starting the job, and in every line of the job process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.helpers import png_bytes
from tests.service.jobs.helpers import shapes, submit, wait_for
from tests.service.servers import start_server, stop_server

pytestmark = pytest.mark.slow  # a real server, a real job

ENV = {
    "PROMPTSERVE_WORKERS": "2",
    "PROMPTSERVE_LOG_FORMAT": "json",
    "PROMPTSERVE_LOG_LEVEL": "debug",  # the engine's line per score call is a debug line
    "PROMPTSERVE_ACCESS_LOG": "true",
    "PROMPTSERVE_JOB_THREADS": "1",
}
CLASSIFY_ID = "abc-classify-0001"
ADAPT_ID = "abc-adapt-0001"


def json_lines(log: Path) -> list[dict[str, Any]]:
    """Every line our handler wrote (each parses); other writers' lines (a library printing a
    warning itself) are not ours to parse."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def test_one_id_in_the_answer_the_engine_and_the_job_process(
    mini_store: Path, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    server = start_server(mini_store, log, timeout=600, **ENV)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            files = [("images", ("red.png", png_bytes(), "image/png"))]
            answer = client.post("/v1/classify", files=files, headers={"X-Request-ID": CLASSIFY_ID})
            client.headers["X-Request-ID"] = ADAPT_ID
            made = submit(
                client, shapes("train", 4), name="parts", method="coop", shots=2, epochs=1,
                publish="always",
            )  # fmt: skip
            del client.headers["X-Request-ID"]
            job = wait_for(client, made["id"], {"succeeded", "failed", "cancelled"})
            events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    finally:
        stop_server(server)
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-Request-ID"] == CLASSIFY_ID
    assert job["state"] == "succeeded", job
    assert made["request_id"] == job["request_id"] == ADAPT_ID
    assert events[0]["data"]["request_id"] == ADAPT_ID

    lines = json_lines(log)
    assert any(
        line["logger"] == "uvicorn.error" and "Uvicorn running" in line["message"] for line in lines
    )  # uvicorn's own lines go through our handler and format
    of_classify = [line for line in lines if line["request_id"] == CLASSIFY_ID]
    engine = [line for line in of_classify if line["process"] == "promptserve-engine"]
    assert engine, of_classify
    assert (engine[0]["classifier"], engine[0]["version"]) == ("default", "1")
    (access,) = [line for line in of_classify if line["logger"] == "promptserve.access"]
    assert access["process"].startswith("SpawnProcess-")  # an API worker
    assert (access["status"], access["path"], access["classifier"]) == (
        200,
        "/v1/classify",
        "default",
    )

    job_process = [line for line in lines if line["process"] == f"promptserve-{job['id']}"]
    assert job_process, "the job process wrote no line"
    assert {line["request_id"] for line in job_process} == {ADAPT_ID}
    assert any("published" in line["message"] for line in job_process)
    (started,) = [
        line
        for line in lines
        if line["process"] == "promptserve-engine" and f"job {job['id']} started" in line["message"]
    ]
    assert started["request_id"] == ADAPT_ID
