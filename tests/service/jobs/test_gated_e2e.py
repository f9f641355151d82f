"""Gated publishing and embeddings against a real `promptserve serve`: a job whose gate fails
is published as a candidate and a plain name keeps serving the version before it; one that
passes moves its alias."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from promptserve.training.data import SYNTHETIC_RECIPE
from tests.service.helpers import b64
from tests.service.jobs.helpers import AUTH, JOB_ENV, PARTS, shapes, wait_for
from tests.service.servers import Server, copy_store, start_server, stop_server

RECIPE = json.dumps({k: list(v) if isinstance(v, tuple) else v
                     for k, v in SYNTHETIC_RECIPE.items()})  # fmt: skip


@pytest.fixture(scope="module")
def server(mini_template_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("gated")
    store = copy_store(mini_template_store, root / "store")
    server = start_server(store, root / "server.log", timeout=600, **JOB_ENV)
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as http:
        yield http


def adapt_v1(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    images = shapes("train", 16)
    files = [("images", (f"{i}.png", data, "image/png")) for i, (data, _) in enumerate(images)]
    data = {"labels": [label for _, label in images]} | {k: str(v) for k, v in fields.items()}
    data |= {"method": "coop", "shots": "12", "config": RECIPE, "seed": "1"}
    response = client.post("/v1/adapt", files=files, data=data)
    assert response.status_code == 202, response.text
    assert response.headers["Location"].startswith("/v1/jobs/")
    job = wait_for(client, response.json()["id"], {"succeeded", "failed", "cancelled"})
    assert job["state"] == "succeeded", job
    return dict(job)


def served_version(client: httpx.Client, ref: str) -> str:
    image = b64(shapes("test", 1)[0][0])
    response = client.post("/v1/classify", json={"classifier": ref, "images": [image]})
    assert response.status_code == 200, response.text
    return str(response.json()["results"][0]["version"])


def test_gated_publishing(client: httpx.Client) -> None:
    first = adapt_v1(client, name="parts", publish="always")
    assert first["publish"] == "always"
    assert (first["result"]["published"], first["result"]["version"]) == ("alias", "1")
    # the same job again scores the same on the same held-out images: it does not beat v1
    second = adapt_v1(client, name="parts")
    assert second["publish"] == "gated"  # the /v1 default
    result = second["result"]
    assert (result["published"], result["version"], result["alias"]) == ("candidate", "2", "latest")
    gate = result["gate"]
    assert gate["passed"] is False
    assert gate["heldout"]["current"] is not None
    assert gate["heldout"]["new"] <= gate["heldout"]["current"]
    assert "does not beat" in gate["reason"]
    assert served_version(client, "parts") == "1"  # a plain name serves the version before
    assert served_version(client, "parts@2") == "2"  # the candidate answers when pinned
    described = client.get("/v1/classifiers/parts").json()
    assert described["aliases"] == {"latest": "1"}
    assert [v["candidate"] for v in described["versions"]] == [False, True]
    # gated on an alias not set yet: compared with zero-shot only, which it beats
    third = adapt_v1(client, name="parts", alias="prod")
    gate = third["result"]["gate"]
    assert gate["passed"] is True, gate
    assert gate["heldout"]["new"] > gate["heldout"]["zeroshot"]
    assert "zero-shot only" in gate["reason"]
    assert third["result"]["published"] == "alias"
    assert served_version(client, "parts@prod") == "3"
    assert client.get("/v1/classifiers/parts").json()["aliases"] == {"latest": "3", "prod": "3"}


def test_embeddings_over_http(client: httpx.Client) -> None:
    images = [b64(data) for data, _ in shapes("test", 1)]  # 4: the per-request limit
    labels = sorted(PARTS)  # the default classifier's colour-shape classes among them
    embedded = client.post("/v1/embeddings", json={"input": images}).json()
    texts = client.post("/v1/embeddings", json={"input": labels, "modality": "text"}).json()
    classified = client.post(
        "/v1/classify", json={"images": images, "labels": labels, "top_k": 1}
    ).json()
    assert embedded["classifier"] == texts["classifier"] == "default"
    vectors = [d["embedding"] for d in embedded["data"]]
    words = [d["embedding"] for d in texts["data"]]
    assert len(vectors) == len(images)
    assert len({len(v) for v in vectors + words}) == 1  # one dimension
    for vector in vectors + words:
        assert abs(sum(x * x for x in vector) - 1) < 1e-3
    for vector, row in zip(vectors, classified["results"][0]["predictions"], strict=True):
        scores = [sum(a * b for a, b in zip(vector, w, strict=True)) for w in words]
        assert labels[scores.index(max(scores))] == row[0]["label"]
