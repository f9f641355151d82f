"""Storage faults seen from outside: a real `promptserve serve` process whose job database
(Postgres) cannot be reached starts, classifies, answers every job request 503 with a code and
Retry-After, and logs one line per failed request, with no traceback, no second line from the
server, and one line from the runner however many of its polls fail."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.service.helpers import png_bytes
from tests.service.jobs.helpers import AUTH, JOB_ENV
from tests.service.servers import free_port, start_server, stop_server
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

POLLS = 40
MISSING = "/jobs/job-0123456789abcdef0123"


def test_an_unreachable_job_database_answers_503_with_one_log_line_each(
    mini_store: Path, tmp_path: Path
) -> None:
    pytest.importorskip("psycopg", reason="psycopg is absent: pip install -e '.[dev]'")
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"  # nothing listens there
    log = tmp_path / "server.log"
    env = JOB_ENV | {"PROMPTSERVE_DATABASE_URL": url, "PROMPTSERVE_JOB_DB_TIMEOUT_S": "1"}
    server = start_server(mini_store, log, timeout=600, **env)
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
            files = [("images", ("x.png", png_bytes(), "image/png"))]
            assert client.post("/classify", files=files).status_code == 200
            for _ in range(POLLS):
                response = client.get(MISSING)
                assert response.status_code == 503, response.text
                assert response.json()["error"]["code"] == "jobs_unavailable"
                assert response.headers["retry-after"] == "5"
            ready = client.get("/health/ready")
            assert ready.status_code == 200
            assert ready.json()["jobs"]["status"] == "unavailable"
            # the runner kept polling meanwhile (every 0.5 s): its failures are one line
            wait_until(lambda: "job runner poll failed" in log.read_text(), timeout=30)
    finally:
        stop_server(server)
    text = log.read_text()
    failed = [line for line in text.splitlines() if f"GET {MISSING} failed" in line]
    assert len(failed) == POLLS, text[-3000:]
    assert "Traceback" not in text
    assert "Exception in ASGI application" not in text
    assert text.count("job runner poll failed") == 1
