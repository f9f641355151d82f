"""`promptserve client` without a server: its output, JSON output and exit statuses, over the
fake /v1 service of `mock_server` (the CLI's `Client` is given its transport)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
from PIL import Image

from promptserve.client import Client, cli
from promptserve.service.cli import main as promptserve_main
from tests.client.mock_server import FakeService, classify_body, error, job_body, ok
from tests.service.servers import free_port


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeService:
    service = FakeService()
    monkeypatch.setattr(cli, "Client", partial(Client, transport=service.sync()))
    return service


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "red_star.png"
    Image.new("RGB", (8, 8), (220, 30, 30)).save(path)
    return path


def test_classify_prints_labels_or_json(
    fake: FakeService, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.on("POST", "/v1/classify", ok(classify_body()))
    assert cli.main(["classify", str(image), "--top-k", "1"]) == 0
    assert capsys.readouterr().out == (f"default version 1 (latest)\n  {image}: red star 0.90\n")
    assert cli.main(["--json", "classify", str(image)]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["results"][0]["predictions"] == [[{"label": "red star", "score": 0.9}]]
    assert answer["request_id"] == "req-ok"


def test_the_promptserve_command_hands_client_over(
    fake: FakeService, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.on("POST", "/v1/classify", ok(classify_body()))
    assert promptserve_main(["client", "classify", str(image), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["classifier"] == "default"
    assert promptserve_main(["-v", "client", "--json", "classify", str(image)]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["classifier"] == "default"


def test_an_error_answer_exits_1_with_its_code_and_request_id(
    fake: FakeService, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fields = [{"path": ["body", "top_k"], "message": "must be >= 1"}]
    fake.on("POST", "/v1/classify", error(422, "invalid_request", "top_k", fields=fields))
    assert cli.main(["classify", str(image), "--top-k", "0"]) == cli.EXIT_API
    err = capsys.readouterr().err
    assert "422 invalid_request: top_k (request req-123)" in err
    assert "  top_k: must be >= 1" in err


def test_local_problems_exit_2(fake: FakeService, tmp_path: Path) -> None:
    assert cli.main(["adapt", "parts", str(tmp_path / "missing")]) == cli.EXIT_USAGE
    assert cli.main(["adapt", "parts", str(tmp_path)]) == cli.EXIT_USAGE  # no images in it
    assert cli.main(["classify", str(tmp_path / "missing.png")]) == cli.EXIT_USAGE
    assert cli.main(["jobs", "show"]) == cli.EXIT_USAGE
    assert cli.main(["aliases", "set", "parts", "prod"]) == cli.EXIT_USAGE
    with pytest.raises(SystemExit) as raised:
        cli.main(["adapt", "parts", str(tmp_path), "--config", "[1]"])
    assert raised.value.code == 2
    assert fake.requests == []


def test_an_unreachable_service_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["--url", url, "--retries", "0", "jobs"]) == cli.EXIT_CONNECTION
    assert "cannot reach the service" in capsys.readouterr().err


def test_adapt_and_wait_for_a_failed_job_exits_4(
    fake: FakeService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / label / "0.png")
    failed = job_body("failed", error={"reason": "error", "message": "loss is nan"})
    fake.on("POST", "/v1/adapt", ok(job_body(), 202)).on("GET", "/v1/jobs/job-1", ok(failed))
    code = cli.main(["adapt", "parts", str(tmp_path), "--epochs", "2", "--wait", "--json"])
    assert code == cli.EXIT_JOB
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"]["message"] == "loss is nan"
    assert "job job-1 failed (error: loss is nan)" in captured.err
    upload = fake.requests[0].content
    assert b'name="epochs"\r\n\r\n2\r\n' in upload
    assert b'name="labels"\r\n\r\na\r\n' in upload


def test_adapt_and_wait_prints_the_published_version(
    fake: FakeService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / label / "0.png")
    result = {"classifier": "parts", "version": "2", "published": "candidate", "alias": "latest",
              "heldout_accuracy": 50.0, "heldout_zeroshot_accuracy": 50.0,
              "gate": {"passed": False, "reason": "does not beat zero-shot"}}  # fmt: skip
    fake.on("POST", "/v1/adapt", ok(job_body(), 202))
    fake.on("GET", "/v1/jobs/job-1", ok(job_body("succeeded", result=result)))
    assert cli.main(["adapt", "parts", str(tmp_path), "--wait", "--publish", "gated"]) == 0
    out = capsys.readouterr().out
    assert "version 2 of parts published as a candidate; held-out accuracy 50.0" in out
    assert "gate: held back: does not beat zero-shot" in out


def test_aliases_classifiers_and_jobs(
    fake: FakeService, capsys: pytest.CaptureFixture[str]
) -> None:
    detail = {"name": "parts", "default": False, "latest": "2",
              "aliases": {"latest": "2", "prod": "1"}, "versions": []}  # fmt: skip
    listing = {"default": "default", "classifiers": [{"name": "parts", "versions": ["1", "2"],
               "latest": "2", "default": False, "aliases": {"latest": "2"}}]}  # fmt: skip
    fake.on("GET", "/v1/classifiers/parts/aliases", ok(detail["aliases"]))
    fake.on("GET", "/v1/classifiers", ok(listing))
    fake.on("PUT", "/v1/classifiers/parts/aliases/prod", ok({"alias": "prod", "version": "2"}))
    fake.on("GET", "/v1/jobs", ok({"data": [job_body()], "has_more": False}))
    assert cli.main(["aliases", "list", "parts"]) == 0
    assert capsys.readouterr().out == "latest -> 2\nprod -> 1\n"
    assert cli.main(["aliases", "set", "parts", "prod", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"alias": "prod", "version": "2"}
    assert fake.requests[-1].content == b'{"version":"2"}'
    assert cli.main(["classifiers"]) == 0
    assert capsys.readouterr().out == "parts  versions 1, 2  latest=2\n"
    assert cli.main(["jobs"]) == 0
    assert capsys.readouterr().out.startswith("job-1  queued     parts  coop")
