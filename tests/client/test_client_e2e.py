"""The client and the remote CLI against a real `promptserve serve` (uvicorn on a free port,
the mini backbone, real tuning jobs): every image kind classified, typed errors carrying the
server's request ids, a 429 retried after its Retry-After, a job waited for and then served
under an alias, a cancelled job, embeddings, and the CLI's exit statuses.

The server admits HELD_BYTES + 96 body bytes in flight (PROMPTSERVE_MAX_INFLIGHT_BYTES), and a
body may arrive at any rate (PROMPTSERVE_BODY_MIN_RATE=0), so a raw socket that sends HELD_BYTES
of a body and stops makes the next request with a body a deterministic 429. (A request waiting
for its client's bytes does not count against PROMPTSERVE_MAX_INFLIGHT_REQUESTS: only the bytes
it sent are held.)
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from promptserve.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    JobFailed,
    NotFoundError,
    UnprocessableError,
)
from promptserve.client import cli as client_cli
from tests.service.jobs.helpers import JOB_ENV, KEY, shapes
from tests.service.servers import REPO, Server, copy_store, start_server, stop_server

pytestmark = pytest.mark.slow

HELD_BYTES = 8000  # what the held request sends of its body


@pytest.fixture(scope="module")
def server(mini_template_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("client-e2e")
    running = start_server(
        copy_store(mini_template_store, root / "store"),
        root / "server.log",
        timeout=600,
        PROMPTSERVE_MAX_INFLIGHT_BYTES=str(HELD_BYTES + 96),
        PROMPTSERVE_BODY_MIN_RATE="0",
        **JOB_ENV,
    )
    yield running
    stop_server(running)


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    with Client(server.url, api_key=KEY, progress=False) as http:
        yield http


@pytest.fixture(scope="module")
def red_star(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from promptserve.training.synthetic.world import render, sample_scene

    path = tmp_path_factory.mktemp("images") / "red_star.png"
    scene = sample_scene(
        np.random.default_rng(0), shape="star", colour="red", style="filled", background="plain"
    )
    render(scene).save(path)
    return path


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """<class>/*.png: four images of each of two part numbers."""
    root = tmp_path_factory.mktemp("parts")
    for i, (data, label) in enumerate(shapes("train", 4)):
        if label in ("part 17", "part 42"):
            folder = root / label.replace(" ", "-")
            folder.mkdir(exist_ok=True)
            (folder / f"{i}.png").write_bytes(data)
    return root


def test_classify_takes_paths_bytes_pil_images_and_arrays(client: Client, red_star: Path) -> None:
    data = red_star.read_bytes()
    image = Image.open(io.BytesIO(data)).convert("RGB")
    result = client.classify([red_star, data, image, np.asarray(image)], top_k=3)
    assert (result.classifier, result.version) == ("default", "1")
    assert result.labels == ["red star"] * 4
    rows = [[(p.label, round(p.score, 4)) for p in row] for row in result.predictions]
    assert rows[1:] == rows[:1] * 3  # the same pixels whichever way they were sent
    assert result.request_id
    one = client.classify(str(red_star), classifier="default@1", labels=["red star", "a boat"])
    assert [p.label for p in one.predictions[0]] == ["red star", "a boat"]


def test_errors_are_typed_and_carry_the_request_id(server: Server, red_star: Path) -> None:
    with Client(server.url, api_key=KEY, headers={"X-Request-ID": "e2e-req-1"}) as client:
        with pytest.raises(NotFoundError) as missing:
            client.classify(red_star, classifier="no-such-classifier")
        assert missing.value.status == 404
        assert missing.value.code == "unknown_classifier"
        assert missing.value.request_id == "e2e-req-1"  # the client's id, echoed
        with pytest.raises(UnprocessableError) as invalid:
            client.classify(red_star, top_k=0)
        assert invalid.value.fields, invalid.value
        assert any("top_k" in field.path for field in invalid.value.fields)
    with Client(server.url, api_key="wrong") as client, pytest.raises(AuthenticationError) as no:
        client.jobs()
    assert (no.value.status, no.value.code) == (401, "unauthorized")
    assert no.value.request_id  # one the server made up


class Recording(httpx.HTTPTransport):
    """A transport that notes every status it receives, and signals the first 429."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: list[int] = []
        self.refused = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.statuses.append(response.status_code)
        if response.status_code == 429:
            self.refused.set()
        return response


def hold_a_slot(server: Server) -> socket.socket:
    """A classify request that sends HELD_BYTES of its body and stops: it holds nearly all the
    body bytes the server admits in flight."""
    host, port = server.url.removeprefix("http://").split(":")
    held = socket.create_connection((host, int(port)))
    start = b'{"images": ['
    held.sendall(
        b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {KEY}\r\nContent-Length: {10 * HELD_BYTES}\r\n\r\n".encode()
        + start
        + b" " * (HELD_BYTES - len(start))  # JSON whitespace
    )
    return held


def wait_until_refused(server: Server) -> None:
    """Until a request with a body is refused: the held bytes have arrived."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        probe = httpx.post(
            f"{server.url}/v1/classify",
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            content=b" " * 200,
        )
        if probe.status_code == 429:
            return
        time.sleep(0.05)
    raise AssertionError("the held request's bytes never reached the server")


def test_a_429_is_retried_after_its_retry_after(server: Server, red_star: Path) -> None:
    transport = Recording()
    held = hold_a_slot(server)
    answers: list[object] = []
    with Client(server.url, api_key=KEY, transport=transport) as client:
        wait_until_refused(server)  # the held request has taken the slot
        started = time.monotonic()
        worker = threading.Thread(target=lambda: answers.append(client.classify(red_star)))
        worker.start()
        assert transport.refused.wait(30), transport.statuses
        held.close()  # the slot frees while the client sleeps out the Retry-After
        worker.join(60)
    assert transport.statuses[0] == 429
    assert transport.statuses[-1] == 200
    assert time.monotonic() - started >= 1.0  # PROMPTSERVE_RETRY_AFTER_S, 1 s by default
    assert len(answers) == 1
    assert answers[0].labels == ["red star"]  # type: ignore[attr-defined]


def test_a_tuning_job_is_waited_for_then_served_under_an_alias(
    client: Client, parts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = client.adapt("parts", parts, method="coop", shots=2, epochs=2, publish="always")
    assert job.state == "queued"
    assert job.classes == ["part-17", "part-42"]
    assert job.images == 8
    done = client.wait(job, timeout=300, poll_interval=0.2, progress=True)
    assert done.succeeded
    assert done.result is not None
    assert (done.result.classifier, done.result.version) == ("parts", "1")
    assert done.result.published == "alias"
    assert done.result.alias == "latest"
    bar = capsys.readouterr().err
    assert "epoch 2/2" in bar
    assert "succeeded" in bar
    assert "created" in client.events(job).data[0].message
    assert job.id in [j.id for j in client.jobs().data]

    image = next((parts / "part-17").iterdir())
    assert client.classify(image, classifier="parts").version == "1"
    assert client.set_alias("parts", "prod", "1").version == "1"
    assert client.aliases("parts")["prod"] == "1"
    pinned = client.classify(image, classifier="parts@prod")
    assert (pinned.classifier, pinned.version) == ("parts", "1")
    assert "prod" in client.classifier("parts").version("1").aliases
    listed = {c.name: c for c in client.classifiers().classifiers}
    assert listed["parts"].aliases["prod"] == "1"
    client.delete_alias("parts", "prod")
    assert "prod" not in client.aliases("parts")
    with pytest.raises(NotFoundError):
        client.delete_alias("parts", "prod")


def test_a_cancelled_job_raises_job_failed(client: Client, parts: Path) -> None:
    job = client.adapt("cancelled", examples=[(p, p.parent.name) for p in parts.rglob("*.png")],
                       epochs=200, shots=2)  # fmt: skip
    deadline = time.monotonic() + 120
    while client.job(job).state == "queued" and time.monotonic() < deadline:
        time.sleep(0.2)
    client.cancel(job)
    with pytest.raises(JobFailed) as failed:
        client.wait(job, timeout=60, poll_interval=0.2)
    assert failed.value.job.state == "cancelled"


def test_embeddings_of_images_and_texts(client: Client, red_star: Path) -> None:
    images = client.embeddings([red_star, red_star.read_bytes()])
    texts = client.embeddings(texts=["red star", "blue square"])
    assert (images.classifier, images.version) == ("default", "1")
    assert [e.modality for e in images.data + texts.data] == ["image"] * 2 + ["text"] * 2
    dims = {len(v) for v in images.vectors + texts.vectors}
    assert len(dims) == 1
    for vector in images.vectors + texts.vectors:
        assert math.isclose(math.hypot(*vector), 1.0, abs_tol=1e-3)
    similarity = images.numpy() @ texts.numpy().T
    assert similarity[0, 0] > similarity[0, 1]  # the red star is nearer "red star"


def test_the_async_client(server: Server, red_star: Path) -> None:
    async def main() -> tuple[list[str], str]:
        async with AsyncClient(server.url, api_key=KEY) as client:
            results = await asyncio.gather(*(client.classify(red_star) for _ in range(3)))
            listing = await client.classifiers()
            return [r.labels[0] for r in results], listing.default

    # three at once on a one-request server: the ones refused are retried
    assert asyncio.run(main()) == (["red star"] * 3, "default")


def promptserve(*args: str, key: str = KEY) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTSERVE_")}
    return subprocess.run(
        [sys.executable, "-m", "promptserve.service.cli", "client", *args],
        cwd=REPO,
        env=environment | {"PROMPTSERVE_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_cli_against_the_server(server: Server, red_star: Path, parts: Path) -> None:
    done = promptserve("--url", server.url, "classify", str(red_star), "--top-k", "2", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["results"][0]["predictions"][0][0]["label"] == "red star"

    done = promptserve("--url", server.url, "classifiers", "show", "nothing-here")
    assert done.returncode == client_cli.EXIT_API
    assert "404 unknown_classifier" in done.stderr
    assert "(request " in done.stderr

    done = promptserve("--url", server.url, "jobs", key="wrong")
    assert done.returncode == client_cli.EXIT_API
    assert "401 unauthorized" in done.stderr

    done = promptserve("--url", server.url, "adapt", "cli-parts", str(parts), "--shots", "2",
                       "--epochs", "1", "--publish", "always", "--wait", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["state"] == "succeeded"
    assert job["result"]["version"] == "1"

    done = promptserve("--url", server.url, "aliases", "set", "cli-parts", "prod", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "cli-parts@prod -> 1\n"
    done = promptserve("--url", server.url, "aliases", "set", "cli-parts", "prod", "9")
    assert done.returncode == client_cli.EXIT_API
    assert "404" in done.stderr
