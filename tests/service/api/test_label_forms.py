"""Labels are told apart as the text tower reads them: spellings of one prompt are one label,
a spelling of a stored class is that class, and characters that print nothing are refused."""

from __future__ import annotations

import pytest

from tests.service.helpers import CLASS_NAMES, ClientFactory, b64, png_bytes

pytestmark = pytest.mark.anyio

IMAGE = b64(png_bytes((220, 30, 30)))


@pytest.mark.parametrize(
    "twin", ["Red Circle", "RED CIRCLE", "ｒｅｄ ｃｉｒｃｌｅ", "red\u00a0circle", "red  circle"]
)
async def test_two_spellings_of_one_prompt_are_refused(
    client_factory: ClientFactory, twin: str
) -> None:
    async with client_factory() as (client, _):
        response = await client.post(
            "/v1/classify",
            json={"classifier": "shapes", "images": [IMAGE], "labels": ["red circle", twin]},
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_label"
        assert "same prompt" in response.json()["error"]["message"]


async def test_a_spelling_of_a_stored_class_is_that_class(client_factory: ClientFactory) -> None:
    async with client_factory(max_new_labels=0) as (client, _):  # no open vocabulary
        stored = await client.post(
            "/v1/classify",
            json={"classifier": "shapes", "images": [IMAGE], "labels": CLASS_NAMES},
        )
        spelled = await client.post(
            "/v1/classify",
            json={
                "classifier": "shapes",
                "images": [IMAGE],
                "labels": [name.upper() for name in CLASS_NAMES],
            },
        )
    assert stored.status_code == spelled.status_code == 200, spelled.text
    assert spelled.json()["results"] == stored.json()["results"]


@pytest.mark.parametrize("label", ["red\u200bcircle", "red\u202ecircle", "red\0circle", "a\nb"])
async def test_invisible_characters_are_refused(client_factory: ClientFactory, label: str) -> None:
    async with client_factory() as (client, _):
        response = await client.post(
            "/v1/classify",
            json={"classifier": "shapes", "images": [IMAGE], "labels": ["blue square", label]},
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_label"
        assert "U+" in response.json()["error"]["message"]
        good = await client.post("/v1/classify", json={"classifier": "shapes", "images": [IMAGE]})
        assert good.status_code == 200


async def test_text_embeddings_of_spellings_are_one_row(client_factory: ClientFactory) -> None:
    async with client_factory() as (client, _):
        response = await client.post(
            "/v1/embeddings",
            json={
                "classifier": "shapes",
                "input": ["red circle", "Red Circle", "teal kite", "TEAL  KITE"],
                "modality": "text",
            },
        )
    assert response.status_code == 200, response.text
    rows = [item["embedding"] for item in response.json()["data"]]
    assert rows[0] == rows[1]
    assert rows[2] == rows[3]
    assert rows[0] != rows[2]
