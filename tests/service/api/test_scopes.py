"""Scoped keys over the app: every route's scope decision, 401 against 403, what each scope
may call, classifier prefixes, a tune key's own jobs, revocation, the audit lines."""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from promptserve.service.api.auth import SCOPE_OF
from promptserve.service.app import create_app
from promptserve.service.keys import hash_secret
from tests.service.helpers import ClientFactory, b64, make_settings, png_bytes, publish_copy
from tests.service.jobs.helpers import assert_error, json_body

pytestmark = pytest.mark.anyio

KEYS = {  # name: (secret, scopes, prefix)
    "reader": ("s-reader", ["classify"], None),
    "tuner": ("s-tuner", ["tune"], None),
    "tuner2": ("s-tuner2", ["tune"], None),
    "ops": ("s-ops", ["admin"], None),
    "prom": ("s-prom", ["metrics"], None),
    "acme": ("s-acme", ["classify", "tune"], "acme-"),
}
# every route of the app and the scope decision it must carry
ROUTE_SCOPES = {
    ("POST", "/v1/classify"): "classify",
    ("POST", "/classify"): "classify",
    ("POST", "/v1/hf/zero-shot-image-classification"): "classify",
    ("POST", "/v1/embeddings"): "classify",
    ("GET", "/v1/classifiers"): "classify",
    ("GET", "/classifiers"): "classify",
    ("GET", "/v1/classifiers/{name}"): "classify",
    ("GET", "/classifiers/{name}"): "classify",
    ("GET", "/v1/classifiers/{name}/versions/{version}"): "classify",
    ("GET", "/classifiers/{name}/{version}"): "classify",
    ("GET", "/v1/classifiers/{name}/aliases"): "classify",
    ("DELETE", "/v1/classifiers/{name}/versions/{version}"): "admin",
    ("DELETE", "/classifiers/{name}/{version}"): "admin",
    ("PUT", "/v1/classifiers/{name}/aliases/{alias}"): "admin",
    ("DELETE", "/v1/classifiers/{name}/aliases/{alias}"): "admin",
    ("POST", "/v1/adapt"): "tune",
    ("POST", "/adapt"): "tune",
    **{
        (m, f"{p}/jobs{s}"): "tune"
        for p in ("", "/v1")
        for m, s in [
            ("GET", ""),
            ("GET", "/{job_id}"),
            ("POST", "/{job_id}/cancel"),
            ("GET", "/{job_id}/events"),
        ]
    },
    ("GET", "/metrics"): "metrics",
    ("GET", "/openapi.json"): "any key",
    ("GET", "/docs"): "any key",
    ("GET", "/redoc"): "any key",
    ("GET", "/health/live"): "public",
    ("GET", "/health/ready"): "public",
    ("GET", "/"): "public",
    ("GET", "/static/{name}"): "public",
}


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name][0]}"}


def write_keys(path: Path, names: list[str] | None = None) -> Path:
    entries = [
        {"name": name, "sha256": hash_secret(secret), "scopes": scopes}
        | ({"prefix": prefix} if prefix else {})
        for name, (secret, scopes, prefix) in KEYS.items()
        if names is None or name in names
    ]
    path.write_text(json.dumps({"keys": entries}))
    return path


@pytest.fixture
def keys_file(tmp_path: Path, store: Path) -> Path:
    publish_copy(store / "shapes" / "1", store, "acme-parts", "1")
    return write_keys(tmp_path / "keys.json")


def _decisions(dependant: Any) -> list[str]:
    found = [SCOPE_OF[dependant.call]] if dependant.call in SCOPE_OF else []
    for sub in dependant.dependencies:
        found += _decisions(sub)
    return found


def _served(routes: list[Any]) -> list[Any]:
    """The routes the app answers: an included router (FastAPI's lazy inclusion) expanded."""
    served = []
    for route in routes:
        expand = getattr(route, "effective_candidates", None)
        served += _served(expand()) if expand is not None else [route]
    return served


def test_every_route_has_one_scope_decision(store: Path, keys_file: Path) -> None:
    app = create_app(make_settings(store, api_keys_file=keys_file))
    decisions = {}
    for route in _served(app.routes):
        dependant = getattr(route, "dependant", None)
        assert dependant is not None, f"{route} is not an API route: it has no scope decision"
        found = set(_decisions(dependant))
        assert len(found) == 1, f"{route.methods} {route.path}: scope decisions {found}"
        decision = found.pop()
        decisions |= {(method, route.path): decision for method in route.methods}
    assert decisions == ROUTE_SCOPES


def _calls(dependant: Any) -> list[Any]:
    """Every dependency's callable in a route's dependency tree."""
    calls = []
    for sub in dependant.dependencies:
        calls += [sub.call, *_calls(sub)]
    return calls


def test_no_route_dependency_runs_on_the_thread_pool(store: Path) -> None:
    # FastAPI runs a plain `def` dependency in a worker thread: two hand-offs per request
    app = create_app(make_settings(store))
    for route in _served(app.routes):
        dependant = getattr(route, "dependant", None)  # None: a plain Starlette route
        for call in _calls(dependant) if dependant is not None else []:
            target = call if inspect.isfunction(call) else type(call).__call__
            assert inspect.iscoroutinefunction(target), f"{route.path}: {call} is not async"


def png_json(**extra: Any) -> dict[str, Any]:
    return {"images": [b64(png_bytes())], **extra}


async def test_401_for_no_or_an_unknown_key_403_naming_the_scope(
    client_factory: ClientFactory, keys_file: Path
) -> None:
    async with client_factory(api_keys_file=keys_file) as (client, _):
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "s-reader"}):
            response = await client.post("/v1/classify", json=png_json(), headers=headers)
            assert_error(response, 401, "unauthorized", "API key")
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert response.json()["error"]["request_id"]
        response = await client.delete(
            "/v1/classifiers/shapes/versions/1", headers=bearer("reader")
        )
        assert_error(response, 403, "forbidden", "this key lacks the 'admin' scope")
        assert response.json()["error"]["request_id"] == response.headers["X-Request-ID"]
        response = await client.get("/metrics", headers=bearer("reader"))
        assert_error(response, 403, "forbidden", "this key lacks the 'metrics' scope")
        response = await client.post("/v1/classify", json=png_json(), headers=bearer("tuner"))
        assert_error(response, 403, "forbidden", "this key lacks the 'classify' scope")
        for url in ("/health/live", "/health/ready", "/"):
            assert (await client.get(url)).status_code == 200, url


async def test_what_each_scope_may_call(client_factory: ClientFactory, keys_file: Path) -> None:
    image = b64(png_bytes())
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/classify", {"json": png_json(classifier="shapes")}),
        ("POST", "/classify", {"json": png_json()}),
        ("POST", "/v1/embeddings", {"json": {"input": [image], "classifier": "shapes"}}),
        ("GET", "/v1/classifiers", {}),
        ("GET", "/v1/classifiers/shapes", {}),
        ("GET", "/v1/classifiers/shapes/versions/1", {}),
        ("GET", "/v1/classifiers/shapes/aliases", {}),
        ("PUT", "/v1/classifiers/shapes/aliases/prod", {"json": {"version": "1"}}),
        ("DELETE", "/v1/classifiers/shapes/aliases/prod", {}),
        ("GET", "/v1/jobs", {}),
        ("POST", "/v1/adapt", {"json": json_body()}),
        ("GET", "/metrics", {}),
        ("GET", "/openapi.json", {}),
    ]
    scope_of = {"/v1/classify": "classify", "/classify": "classify", "/v1/embeddings": "classify"}
    async with client_factory(api_keys_file=keys_file, max_concurrent_jobs=0) as (client, _):
        for name in ("reader", "tuner", "prom", "ops"):
            for method, path, kwargs in calls:
                response = await client.request(method, path, headers=bearer(name), **kwargs)
                needed = scope_of.get(path) or ROUTE_SCOPES.get((method, _template(path)))
                allowed = needed == "any key" or name == "ops" or KEYS[name][1] == [needed]
                if allowed:
                    assert response.status_code < 300, (name, method, path, response.text)
                else:
                    assert_error(response, 403, "forbidden", f"'{needed}' scope")


def _template(path: str) -> str:
    return (
        path.replace("/shapes/versions/1", "/{name}/versions/{version}")
        .replace("/shapes/aliases/prod", "/{name}/aliases/{alias}")
        .replace("/shapes/aliases", "/{name}/aliases")
        .replace("/shapes", "/{name}")
    )


async def test_a_prefix_limits_the_classifiers_a_key_may_use(
    client_factory: ClientFactory, keys_file: Path
) -> None:
    acme = bearer("acme")
    async with client_factory(api_keys_file=keys_file, max_concurrent_jobs=0) as (client, _):
        ok = await client.post("/v1/classify", json=png_json(classifier="acme-parts"), headers=acme)
        assert ok.status_code == 200, ok.text
        for body in (
            png_json(classifier="shapes"),
            png_json(),  # the default classifier
            png_json(classifiers=["acme-parts", "shapes"]),
        ):
            response = await client.post("/v1/classify", json=body, headers=acme)
            assert_error(response, 403, "forbidden", "'acme-'")
        refused = await client.post("/v1/classify?classifier=shapes", json=png_json(), headers=acme)
        assert_error(refused, 403, "forbidden")
        embed = {"input": [b64(png_bytes())], "classifier": "default"}
        assert_error(
            await client.post("/v1/embeddings", json=embed, headers=acme), 403, "forbidden"
        )
        embed["classifier"] = "acme-parts@1"
        assert (await client.post("/v1/embeddings", json=embed, headers=acme)).status_code == 200
        listed = (await client.get("/v1/classifiers", headers=acme)).json()
        assert [c["name"] for c in listed["classifiers"]] == ["acme-parts"]
        assert (await client.get("/v1/classifiers/acme-parts", headers=acme)).status_code == 200
        for path in (
            "/v1/classifiers/shapes",
            "/v1/classifiers/shapes@latest",
            "/classifiers/shapes/1",
        ):
            assert_error(await client.get(path, headers=acme), 403, "forbidden", "'acme-'")
        response = await client.post("/v1/adapt", json=json_body(name="mine"), headers=acme)
        assert_error(response, 403, "forbidden", "'acme-'")
        response = await client.post("/v1/adapt", json=json_body(name="acme-new"), headers=acme)
        assert response.status_code == 202, response.text
        assert response.json()["owner"] == "acme"


async def test_a_tune_key_sees_only_its_own_jobs(
    client_factory: ClientFactory, keys_file: Path
) -> None:
    async with client_factory(api_keys_file=keys_file, max_concurrent_jobs=0) as (client, _):
        mine = (await client.post("/v1/adapt", json=json_body(), headers=bearer("tuner"))).json()
        theirs = (await client.post("/v1/adapt", json=json_body(), headers=bearer("tuner2"))).json()
        assert (mine["owner"], theirs["owner"]) == ("tuner", "tuner2")
        listed = (await client.get("/v1/jobs", headers=bearer("tuner"))).json()
        assert [job["id"] for job in listed["data"]] == [mine["id"]]
        for method, path in [
            ("GET", f"/v1/jobs/{theirs['id']}"),
            ("GET", f"/v1/jobs/{theirs['id']}/events"),
            ("POST", f"/v1/jobs/{theirs['id']}/cancel"),
            ("GET", f"/jobs/{theirs['id']}"),
        ]:
            response = await client.request(method, path, headers=bearer("tuner"))
            assert_error(response, 404, "unknown_job", theirs["id"])
        assert (
            await client.get(f"/v1/jobs/{mine['id']}/events", headers=bearer("tuner"))
        ).status_code == 200
        everyone = (await client.get("/v1/jobs", headers=bearer("ops"))).json()
        assert {job["id"] for job in everyone["data"]} == {mine["id"], theirs["id"]}
        cancelled = await client.post(f"/v1/jobs/{theirs['id']}/cancel", headers=bearer("ops"))
        assert cancelled.json()["state"] == "cancelled"
        cancelled = await client.post(f"/v1/jobs/{mine['id']}/cancel", headers=bearer("tuner"))
        assert cancelled.json()["state"] == "cancelled"
        reused = await client.post(
            "/v1/adapt", json=json_body(), headers=bearer("tuner") | {"Idempotency-Key": "k1"}
        )
        assert reused.status_code == 202
        other = await client.post(
            "/v1/adapt", json=json_body(), headers=bearer("tuner2") | {"Idempotency-Key": "k1"}
        )
        assert_error(other, 422, "idempotency_conflict", "another API key")


async def test_mutating_calls_log_one_audit_line_naming_the_key(
    client_factory: ClientFactory, keys_file: Path, store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    publish_copy(store / "shapes" / "1", store, "shapes", "2")
    async with client_factory(api_keys_file=keys_file, max_concurrent_jobs=0) as (client, _):
        ops = bearer("ops")
        with caplog.at_level(logging.INFO, logger="promptserve.audit"):
            put = await client.put(
                "/v1/classifiers/shapes/aliases/prod", json={"version": "1"}, headers=ops
            )
            assert put.status_code == 200
            await client.delete("/v1/classifiers/shapes/aliases/prod", headers=ops)
            assert (
                await client.delete("/v1/classifiers/shapes/versions/2", headers=ops)
            ).status_code == 204
            job = (await client.post("/v1/adapt", json=json_body(), headers=bearer("tuner"))).json()
            await client.post(f"/v1/jobs/{job['id']}/cancel", headers=bearer("tuner"))
            await client.post("/v1/classify", json=png_json(), headers=bearer("reader"))
    lines = [r.getMessage() for r in caplog.records if r.name == "promptserve.audit"]
    assert lines == [
        "audit key=ops action=alias_set classifier=shapes alias=prod version=1",
        "audit key=ops action=alias_delete classifier=shapes alias=prod",
        "audit key=ops action=delete classifier=shapes version=2",
        f"audit key=tuner action=adapt classifier=mine job={job['id']}",
        f"audit key=tuner action=cancel job={job['id']} classifier=mine",
    ]
    assert not any(secret in caplog.text for secret, _, _ in KEYS.values())


async def test_a_removed_key_fails_after_the_reload_and_the_single_key_stays(
    client_factory: ClientFactory, keys_file: Path
) -> None:
    overrides = {"api_keys_file": keys_file, "api_key": "sesame"}
    async with client_factory(**overrides) as (client, runtime):
        runtime.keys.check_s = 0.0  # look at the file on every request
        assert (await client.get("/v1/classifiers", headers=bearer("reader"))).status_code == 200
        write_keys(keys_file, ["ops"])
        response = await client.get("/v1/classifiers", headers=bearer("reader"))
        assert_error(response, 401, "unauthorized")
        assert (await client.get("/v1/classifiers", headers=bearer("ops"))).status_code == 200
        keys_file.write_text("{broken")  # keeps the last good keys
        assert (await client.get("/v1/classifiers", headers=bearer("ops"))).status_code == 200
        single = {"Authorization": "Bearer sesame"}
        assert (await client.get("/metrics", headers=single)).status_code == 200
        assert (await client.get("/docs", headers=single)).status_code == 200
        assert_error(await client.get("/docs"), 401, "unauthorized")


async def test_no_keys_configured_is_open_and_jobs_have_no_owner(
    client_factory: ClientFactory,
) -> None:
    async with client_factory(max_concurrent_jobs=0) as (client, _):
        put = await client.put("/v1/classifiers/shapes/aliases/prod", json={"version": "1"})
        assert put.status_code == 200
        job = (await client.post("/v1/adapt", json=json_body())).json()
        assert job["owner"] is None
        assert (await client.get(f"/v1/jobs/{job['id']}")).status_code == 200
        assert (await client.get("/docs")).status_code == 200
