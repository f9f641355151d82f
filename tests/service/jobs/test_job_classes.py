"""A job's class names follow the label rules (printable, one spelling per prompt, the token
limit) and its class count is bounded; every refusal is a 422 that queues nothing."""

from __future__ import annotations

import pytest

from tests.service.helpers import ClientFactory, b64, png_bytes
from tests.service.jobs.helpers import BLUE, RED, assert_error, post_json

pytestmark = pytest.mark.anyio


def body(*labels: str) -> dict[str, object]:
    colours = [RED, BLUE]
    images = [
        {"data": b64(png_bytes(colours[i % 2], size=24)), "label": label}
        for i, label in enumerate(labels)
    ]
    return {"name": "mine", "images": images}


@pytest.mark.parametrize(
    ("labels", "words"),
    [
        (["red\0thing", "blue thing"], ["U+0000"]),
        (["red\nthing", "blue thing"], ["U+000A"]),
        (["red\tthing", "blue thing"], ["U+0009"]),
        (["red \u202ething", "blue thing"], ["U+202E"]),
        (["red\u200bthing", "blue thing"], ["U+200B"]),
        (["red thing", "Red Thing", "blue thing"], ["same prompt"]),
        (["red thing", "ｒｅｄ ｔｈｉｎｇ", "blue thing"], ["same prompt"]),
        (["red thing", "red\u00a0thing", "blue thing"], ["same prompt"]),
        (["red thing", "red  thing", "blue thing"], ["same prompt"]),
        ([" ".join(["a"] * 99), "blue thing"], ["99 tokens long", "at most 32"]),
    ],
    ids=[
        "nul",
        "newline",
        "tab",
        "rtl-override",
        "zero-width",
        "case",
        "width",
        "nbsp",
        "spaces",
        "99-tokens",
    ],
)
async def test_bad_class_names_are_refused(
    client_factory: ClientFactory, labels: list[str], words: list[str]
) -> None:
    async with client_factory(max_concurrent_jobs=0) as (client, _):
        assert_error(await post_json(client, body(*labels)), 422, "invalid_request", *words)
        assert (await client.get("/v1/jobs")).json()["data"] == []


async def test_class_names_in_another_script_are_fine(client_factory: ClientFactory) -> None:
    async with client_factory(max_concurrent_jobs=0) as (client, _):
        response = await post_json(client, body("rote Katze", "青い猫", "кот"))
        assert response.status_code == 202, response.text
        assert sorted(response.json()["classes"]) == sorted(["rote Katze", "青い猫", "кот"])


async def test_the_class_count_is_bounded(client_factory: ClientFactory) -> None:
    async with client_factory(max_concurrent_jobs=0, max_job_classes=4) as (client, _):
        refused = await post_json(client, body(*[f"class {i}" for i in range(5)]))
        assert_error(refused, 422, "invalid_request", "5 classes", "at most 4")
        accepted = await post_json(client, body(*[f"class {i}" for i in range(4)]))
        assert accepted.status_code == 202, accepted.text


async def test_images_per_class_can_be_required(client_factory: ClientFactory) -> None:
    async with client_factory(max_concurrent_jobs=0, min_job_images_per_class=2) as (client, _):
        refused = await post_json(client, body("a", "b", "a"))  # b has one image
        assert_error(refused, 422, "invalid_request", "at least 2 images", "'b'")
        accepted = await post_json(client, body("a", "b", "a", "b"))
        assert accepted.status_code == 202, accepted.text
