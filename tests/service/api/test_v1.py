"""The /v1 API in process: one response shape per route, no response unions in the OpenAPI
document, the deprecated unversioned paths, request ids and field paths in errors, aliases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from promptserve.service.aliases import ALIASES_FILE
from promptserve.service.api.middleware import AdmissionMiddleware, RequestIdMiddleware
from tests.service.helpers import CLASS_NAMES, ClientFactory, b64, png_bytes, publish_copy

pytestmark = pytest.mark.anyio

IMAGE = {"images": [b64(png_bytes())]}


def _response_schemas(document: dict[str, Any]) -> list[tuple[str, Any]]:
    found = []
    for path, methods in document["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in methods.items():
            for status, response in operation.get("responses", {}).items():
                for media in response.get("content", {}).values():
                    found.append((f"{method.upper()} {path} {status}", media.get("schema", {})))
    return found


def _unions(node: Any, document: dict[str, Any], seen: set[str]) -> list[Any]:
    """anyOf / oneOf nodes under `node` (following $refs), except `X | null` (a nullable X,
    not a union a generated client has to tell apart)."""
    found = []
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref not in seen:
            seen.add(ref)
            target = document
            for part in ref.removeprefix("#/").split("/"):
                target = target[part]
            found += _unions(target, document, seen)
        for key in ("anyOf", "oneOf"):
            if key in node:
                options = [o for o in node[key] if o != {"type": "null"}]
                if len(options) > 1 or key == "oneOf":
                    found.append(node)
        for value in node.values():
            found += _unions(value, document, seen)
    elif isinstance(node, list):
        for value in node:
            found += _unions(value, document, seen)
    return found


async def test_openapi_has_no_response_unions_under_v1(client_factory: ClientFactory) -> None:
    from importlib.metadata import version

    async with client_factory() as (client, _):
        document = (await client.get("/openapi.json")).json()
    assert document["info"]["version"] == version("promptserve")
    schemas = _response_schemas(document)
    assert any("/v1/classify" in where for where, _ in schemas)
    for where, schema in schemas:
        assert not _unions(schema, document, set()), where
    # the old path still declares its three shapes, and is marked deprecated
    assert document["paths"]["/classify"]["post"]["deprecated"] is True
    assert "deprecated" not in document["paths"]["/v1/classify"]["post"]
    for path in ("/health/ready", "/metrics"):
        assert path in document["paths"]


async def test_old_paths_answer_as_before_with_deprecation_headers(
    client_factory: ClientFactory,
) -> None:
    async with client_factory() as (client, _):
        old = await client.post("/classify", json=IMAGE)
        new = await client.post("/v1/classify", json=IMAGE)
        old_version = await client.get("/classifiers/shapes/1")
        jobs = await client.get("/jobs")
        missing = await client.get("/classifiers/nope")
        health = await client.get("/health/live")
    assert old.status_code == 200
    assert "predictions" in old.json()
    assert old.headers["Deprecation"] == "true"
    assert old.headers["Link"] == '</v1/classify>; rel="successor-version"'
    assert new.json()["results"][0]["predictions"] == old.json()["predictions"]
    assert "Deprecation" not in new.headers
    assert old_version.headers["Link"] == (
        '</v1/classifiers/shapes/versions/1>; rel="successor-version"'
    )
    assert jobs.headers["Deprecation"] == "true"
    assert missing.status_code == 404
    assert missing.headers["Deprecation"] == "true"
    assert "Deprecation" not in health.headers


async def test_v1_classify_has_one_shape(client_factory: ClientFactory) -> None:
    async with client_factory() as (client, _):
        one = await client.post("/v1/classify", json=IMAGE | {"classifier": "shapes"})
        several = await client.post(
            "/v1/classify", json=IMAGE | {"classifiers": ["default", "shapes@1"]}
        )
        files = {"images": ("a.png", png_bytes(), "image/png")}
        form = await client.post("/v1/classify", files=files, data={"classifier": "shapes@1"})
        raw = await client.post(
            "/v1/classify", content=png_bytes(), headers={"Content-Type": "image/png"}
        )
        hf_here = await client.post(
            "/v1/classify",
            json={"inputs": b64(png_bytes()), "parameters": {"candidate_labels": ["a", "b"]}},
        )
        hf = await client.post(
            "/v1/hf/zero-shot-image-classification?classifier=shapes",
            json={
                "inputs": b64(png_bytes()),
                "parameters": {"candidate_labels": ["red circle", "blue square"]},
            },
        )
    for response in (one, several, form, raw):
        assert response.status_code == 200, response.text
        assert list(response.json()) == ["results"]
    assert one.json()["results"][0]["alias"] == "latest"
    assert [r["classifier"] for r in several.json()["results"]] == ["default", "shapes"]
    assert several.json()["results"][1]["alias"] is None  # named by its version
    assert form.json()["results"][0]["version"] == "1"
    assert hf_here.status_code == 422
    assert "/v1/hf/zero-shot-image-classification" in hf_here.json()["error"]["message"]
    assert hf.status_code == 200
    assert {p["label"] for p in hf.json()} == {"red circle", "blue square"}


async def test_request_ids_on_every_answer(client_factory: ClientFactory) -> None:
    async with client_factory() as (client, _):
        echoed = await client.post(
            "/v1/classify", json=IMAGE, headers={"X-Request-ID": "client-id:42"}
        )
        invented = await client.post(
            "/v1/classify", json=IMAGE, headers={"X-Request-ID": "not valid!"}
        )
        error = await client.post(
            "/v1/classify", json={"images": "x"}, headers={"X-Request-ID": "bad-1"}
        )
        health = await client.get("/health/live")
    assert echoed.headers["X-Request-ID"] == "client-id:42"
    assert invented.headers["X-Request-ID"] not in ("", "not valid!")
    assert error.status_code == 422
    assert error.headers["X-Request-ID"] == "bad-1"
    assert error.json()["error"]["request_id"] == "bad-1"
    assert health.headers["X-Request-ID"]


async def test_422s_carry_field_paths(client_factory: ClientFactory) -> None:
    async with client_factory() as (client, _):
        body = await client.post("/v1/classify", json={"images": [1], "top_k": 0})
        query = await client.post("/v1/classify?top_k=0", json=IMAGE)
        jobs = await client.get("/v1/jobs?limit=0")
        unknown = await client.get("/v1/nothing-here")
    error = body.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["message"]
    paths = [f["path"] for f in error["fields"]]
    assert ["body", "images", 0] in paths
    assert ["body", "top_k"] in paths
    assert [f["path"] for f in query.json()["error"]["fields"]] == [["query", "top_k"]]
    assert jobs.json()["error"]["fields"][0]["path"] == ["query", "limit"]
    assert unknown.status_code == 404
    assert unknown.json()["error"]["request_id"] == unknown.headers["X-Request-ID"]
    assert "fields" not in unknown.json()["error"]


async def test_middleware_errors_carry_the_request_id(client_factory: ClientFactory) -> None:
    async with client_factory(max_body_bytes=1000) as (client, _):
        big = await client.post(
            "/v1/classify", content=b"x" * 5000, headers={"X-Request-ID": "big-one"}
        )
    assert big.status_code == 413
    assert big.json()["error"]["request_id"] == "big-one"
    assert big.headers["X-Request-ID"] == "big-one"

    # admission at its limit (one request in flight already): refused before the app runs
    async def never(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("admitted")

    admission = AdmissionMiddleware(
        never, max_requests=1, max_bytes=1 << 20, body_limit=1 << 20, retry_after_s=2
    )
    admission.flight.requests = 1
    transport = httpx.ASGITransport(app=RequestIdMiddleware(admission))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        refused = await client.post("/v1/classify", json=IMAGE, headers={"X-Request-ID": "r"})
    assert refused.status_code == 429
    assert refused.json()["error"]["request_id"] == "r"
    assert refused.headers["Retry-After"]


async def test_aliases_resolve_everywhere(client_factory: ClientFactory, store: Path) -> None:
    publish_copy(store / "shapes" / "1", store, "shapes", "2")
    async with client_factory() as (client, _):
        put = await client.put("/v1/classifiers/shapes/aliases/prod", json={"version": "1"})
        listed = (await client.get("/v1/classifiers")).json()
        described = (await client.get("/v1/classifiers/shapes")).json()
        by_alias = await client.post("/v1/classify", json=IMAGE | {"classifier": "shapes@prod"})
        by_field = await client.post(
            "/v1/classify", json=IMAGE | {"classifier": "shapes", "version": "prod"}
        )
        plain = await client.post("/v1/classify", json=IMAGE | {"classifier": "shapes"})
        conflict = await client.post(
            "/v1/classify", json=IMAGE | {"classifier": "shapes@prod", "version": "2"}
        )
        one = await client.get("/v1/classifiers/shapes/versions/prod")
        only = (await client.get("/v1/classifiers/shapes@prod")).json()
        refused = await client.delete("/v1/classifiers/shapes/versions/1")
        unknown = await client.post("/v1/classify", json=IMAGE | {"classifier": "shapes@beta"})
        bad_name = await client.put("/v1/classifiers/shapes/aliases/123", json={"version": "1"})
        bad_version = await client.put("/v1/classifiers/shapes/aliases/x", json={"version": "9"})
        removed = await client.delete("/v1/classifiers/shapes/aliases/prod")
        absent = await client.delete("/v1/classifiers/shapes/aliases/prod")
        deleted = await client.delete("/v1/classifiers/shapes/versions/1")
    assert put.status_code == 200
    assert put.json() == {"alias": "prod", "version": "1"}
    assert json.loads((store / "shapes" / ALIASES_FILE).read_text()) == {"aliases": {}}
    shapes = next(c for c in listed["classifiers"] if c["name"] == "shapes")
    assert shapes["aliases"] == {"latest": "2", "prod": "1"}
    assert shapes["latest"] == "2"
    assert described["aliases"] == {"latest": "2", "prod": "1"}
    assert [v["aliases"] for v in described["versions"]] == [["prod"], ["latest"]]
    assert [v["candidate"] for v in described["versions"]] == [False, False]
    result = by_alias.json()["results"][0]
    assert (result["version"], result["alias"]) == ("1", "prod")
    assert by_field.json()["results"][0]["version"] == "1"
    assert plain.json()["results"][0]["version"] == "2"
    assert plain.json()["results"][0]["alias"] == "latest"
    assert conflict.status_code == 422
    assert one.json()["version"] == "1"
    assert [v["version"] for v in only["versions"]] == ["1"]
    assert refused.status_code == 409
    assert "prod" in refused.json()["error"]["message"]
    assert unknown.status_code == 404
    assert bad_name.status_code == 422
    assert bad_version.status_code == 404
    assert removed.status_code == 204
    assert absent.status_code == 404
    assert deleted.status_code == 204


async def test_a_pinned_latest_stays_until_deleted(
    client_factory: ClientFactory, store: Path
) -> None:
    publish_copy(store / "shapes" / "1", store, "shapes", "2")
    async with client_factory() as (client, _):
        await client.put("/v1/classifiers/shapes/aliases/latest", json={"version": "1"})
        publish_copy(store / "shapes" / "1", store, "shapes", "3")  # published meanwhile
        pinned = await client.post("/v1/classify", json=IMAGE | {"classifier": "shapes"})
        old_path = await client.post("/classify", json=IMAGE | {"classifier": "shapes"})
        await client.delete("/v1/classifiers/shapes/aliases/latest")
        follows = await client.post("/v1/classify", json=IMAGE | {"classifier": "shapes"})
    assert pinned.json()["results"][0]["version"] == "1"
    assert old_path.json()["version"] == "1"
    assert follows.json()["results"][0]["version"] == "3"


async def test_latest_skips_candidates(client_factory: ClientFactory, store: Path) -> None:
    candidate = publish_copy(store / "shapes" / "1", store, "shapes", "2")
    manifest = json.loads((candidate / "manifest.json").read_text())
    manifest["training"] = {"publish": {"published": "candidate", "alias": "latest"}}
    (candidate / "manifest.json").write_text(json.dumps(manifest))
    async with client_factory() as (client, _):
        plain = await client.post("/v1/classify", json=IMAGE | {"classifier": "shapes"})
        pinned = await client.post("/v1/classify", json=IMAGE | {"classifier": "shapes@2"})
        described = (await client.get("/v1/classifiers/shapes")).json()
        await client.put("/v1/classifiers/shapes/aliases/beta", json={"version": "2"})
        promoted = (await client.get("/v1/classifiers/shapes")).json()
    assert plain.json()["results"][0]["version"] == "1"
    assert pinned.json()["results"][0]["version"] == "2"
    assert described["latest"] == "1"
    assert [v["candidate"] for v in described["versions"]] == [False, True]
    # an alias set to a candidate makes it an ordinary version: latest follows it again
    assert promoted["latest"] == "2"
    assert [v["candidate"] for v in promoted["versions"]] == [False, False]


async def test_embeddings_are_what_the_classifier_scores_with(
    client_factory: ClientFactory,
) -> None:
    images = [png_bytes((220, 30, 30)), png_bytes((30, 30, 220)), png_bytes((30, 200, 30))]
    async with client_factory() as (client, _):
        embedded = await client.post(
            "/v1/embeddings",
            json={"classifier": "shapes@1", "input": [b64(i) for i in images]},
        )
        texts = await client.post(
            "/v1/embeddings",
            json={"classifier": "shapes", "input": CLASS_NAMES, "modality": "text"},
        )
        classified = await client.post(
            "/v1/classify", json={"classifier": "shapes", "images": [b64(i) for i in images]}
        )
        files = [("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
        form = await client.post("/v1/embeddings", files=files, data={"classifier": "shapes"})
        empty = await client.post("/v1/embeddings", json={"input": [], "modality": "text"})
        too_many = await client.post("/v1/embeddings", json={"input": [b64(images[0])] * 1000})
    assert embedded.status_code == 200, embedded.text
    body = embedded.json()
    assert (body["object"], body["model"], body["version"]) == ("list", "shapes@1", "1")
    assert body["usage"] == {"images": 3, "texts": 0}
    vectors = torch.tensor([d["embedding"] for d in body["data"]])
    words = torch.tensor([d["embedding"] for d in texts.json()["data"]])
    assert [d["modality"] for d in texts.json()["data"]] == ["text"] * len(CLASS_NAMES)
    assert vectors.shape[1] == words.shape[1]
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(3), atol=1e-4)
    assert torch.allclose(words.norm(dim=-1), torch.ones(len(CLASS_NAMES)), atol=1e-4)
    top = [row[0]["label"] for row in classified.json()["results"][0]["predictions"]]
    assert [CLASS_NAMES[i] for i in (vectors @ words.T).argmax(dim=-1).tolist()] == top
    form_vectors = torch.tensor([d["embedding"] for d in form.json()["data"]])
    assert torch.allclose(form_vectors, vectors, atol=1e-5)
    assert empty.status_code == 422
    assert too_many.status_code == 413
