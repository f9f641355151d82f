"""The two log formats (``PROMPTSERVE_LOG_FORMAT``): every JSON line parses and names the
request, the classifier, the version and the latency; a text line names the request id. The
lines of real server processes are in test_request_id_e2e.py."""

from __future__ import annotations

import json
import logging
import re

import pytest

from promptserve.service.logs import configure_logging
from tests.service.helpers import ClientFactory, b64, png_bytes

pytestmark = pytest.mark.anyio
IMAGE = {"images": [b64(png_bytes())]}
JSON_FIELDS = {"time", "level", "logger", "process", "message", "request_id"}


async def test_json_lines_parse_and_carry_the_request(
    client_factory: ClientFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", "json")
    async with client_factory(access_log=True) as (client, _):
        answer = await client.post("/v1/classify", json=IMAGE, headers={"X-Request-ID": "js-1"})
        logging.getLogger("promptserve.test").warning("two\nlines")  # still one JSON line
    assert answer.status_code == 200
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) >= 4  # start-up lines, the access line, ours
    for line in lines:
        assert set(line) >= JSON_FIELDS, line
        assert line["process"] == "MainProcess"
    (access,) = [line for line in lines if line["logger"] == "promptserve.access"]
    assert access["request_id"] == "js-1"
    assert (access["classifier"], access["version"]) == ("default", "1")
    assert (access["method"], access["path"], access["status"]) == ("POST", "/v1/classify", 200)
    assert access["latency_ms"] > 0
    assert access["level"] == "INFO"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00", access["time"])
    ours = lines[-1]
    assert (ours["message"], ours["request_id"]) == ("two\nlines", None)  # outside a request
    assert "classifier" not in ours


async def test_text_lines_name_the_request_id(
    client_factory: ClientFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", "text")
    async with client_factory(access_log=True) as (client, _):
        await client.post("/v1/classify", json=IMAGE, headers={"X-Request-ID": "tx-1"})
    err = capsys.readouterr().err
    assert re.search(
        r" INFO MainProcess promptserve\.access \[tx-1\]: POST /v1/classify 200 [\d.]+ ms "
        r"default@1$",
        err,
        re.MULTILINE,
    ), err
    assert re.search(r" promptserve\.service\.app \[-\]: serving store ", err), err


def test_configuring_again_replaces_our_handler_only() -> None:
    root = logging.getLogger()
    others = len(root.handlers)  # pytest's own capture handlers
    configure_logging("info", "json")
    configure_logging("debug", "text")
    assert len(root.handlers) == others + 1
    assert logging.getLogger("promptserve").level == logging.DEBUG
    assert logging.getLogger("uvicorn").level == logging.DEBUG  # its lines pass through ours
    assert root.level == logging.WARNING  # everyone else's
