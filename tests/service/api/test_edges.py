"""HTTP around the routes: HEAD on every GET route, a coded body refused, the slash redirect."""

from __future__ import annotations

import pytest

from tests.service.helpers import ClientFactory, b64, png_bytes

pytestmark = pytest.mark.anyio

GET_ROUTES = ["/health/live", "/health/ready", "/metrics", "/v1/classifiers", "/", "/jobs"]


@pytest.mark.parametrize("path", GET_ROUTES)
async def test_head_answers_like_get_without_a_body(
    client_factory: ClientFactory, path: str
) -> None:
    async with client_factory() as (client, _):
        get = await client.get(path)
        head = await client.head(path)
        assert get.status_code == 200, get.text
        assert head.status_code == 200, head.text
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
        assert "x-request-id" in head.headers


async def test_head_of_a_route_without_get_is_still_405(client_factory: ClientFactory) -> None:
    async with client_factory() as (client, _):
        response = await client.head("/v1/classify")
        assert response.status_code == 405
        assert response.content == b""


@pytest.mark.parametrize("coding", ["gzip", "br", "deflate", "GZIP, identity"])
async def test_a_coded_body_is_415_and_the_next_request_succeeds(
    client_factory: ClientFactory, coding: str
) -> None:
    async with client_factory() as (client, _):
        refused = await client.post(
            "/v1/classify",
            content=b"\x1f\x8b\x08\x00compressed",
            headers={"Content-Type": "application/json", "Content-Encoding": coding},
        )
        assert refused.status_code == 415, refused.text
        error = refused.json()["error"]
        assert error["code"] == "unsupported_media_type"
        assert coding.lower() in error["message"]
        assert error["request_id"] == refused.headers["x-request-id"]
        good = await client.post(
            "/v1/classify",
            json={"images": [b64(png_bytes())]},
            headers={"Content-Encoding": "identity"},
        )
        assert good.status_code == 200, good.text


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/v1/classifiers/", "/v1/classifiers"),
        ("/health/live/", "/health/live"),
        ("/v1/classifiers/?limit=2", "/v1/classifiers?limit=2"),
    ],
)
async def test_the_slash_redirect_is_relative_whatever_the_host(
    client_factory: ClientFactory, path: str, target: str
) -> None:
    async with client_factory() as (client, _):
        response = await client.get(path, headers={"Host": "evil.example"})
        assert response.status_code == 307
        assert response.headers["location"] == target
        followed = await client.get(response.headers["location"])
        assert followed.status_code == 200


@pytest.mark.parametrize("path", ["/nope/", "//health/live", "/v1/classify/x/"])
async def test_no_redirect_without_a_route_or_off_the_server(
    client_factory: ClientFactory, path: str
) -> None:
    async with client_factory() as (client, _):
        response = await client.get(path, headers={"Host": "evil.example"})
        assert response.status_code == 404, response.headers
        assert "location" not in response.headers


KEY = "edge-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.mark.parametrize(
    ("method", "path", "with_key"),
    [
        ("GET", "/v1/classify", 405),  # POST only
        ("DELETE", "/health/live", 405),
        ("GET", "/no/such/route", 404),
        ("GET", "/v1/classifiers/", 307),
    ],
)
async def test_a_caller_without_a_key_learns_nothing_of_the_routes(
    client_factory: ClientFactory, method: str, path: str, with_key: int
) -> None:
    async with client_factory(api_key=KEY) as (client, _):
        anonymous = await client.request(method, path)
        assert anonymous.status_code == 401, anonymous.text
        assert anonymous.json()["error"]["code"] == "unauthorized"
        wrong = await client.request(method, path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        known = await client.request(method, path, headers=AUTH)
        assert known.status_code == with_key, known.text


async def test_head_needs_the_key_its_get_needs(client_factory: ClientFactory) -> None:
    async with client_factory(api_key=KEY) as (client, _):
        assert (await client.head("/health/live")).status_code == 200
        assert (await client.head("/v1/classifiers")).status_code == 401
        allowed = await client.head("/v1/classifiers", headers=AUTH)
        assert allowed.status_code == 200
        assert allowed.content == b""
