"""First start on an empty store: 503 while the default classifier is created on the `mini`
backbone (the one slow test of this package: a mini export), then ready; a restart reuses it."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptserve.training.synthetic.tasks import color_shape_classes
from tests.service.helpers import b64, make_settings, png_bytes, serve

pytestmark = pytest.mark.anyio

IMAGE = {"images": [b64(png_bytes())]}


@pytest.mark.slow
async def test_empty_store_gets_a_zeroshot_default_on_mini(tmp_path: Path) -> None:
    store = tmp_path / "empty-store"
    settings = make_settings(store, create_default=True, default_backbone="mini")
    async with serve(settings, wait=False) as (client, runtime):
        starting = await client.get("/health/ready")
        early = await client.post("/classify", json=IMAGE)
        assert await runtime.local.wait_ready(timeout=600) == "ready", runtime.local.failure
        ready = await client.get("/health/ready")
        described = (await client.get("/classifiers/default")).json()
        classified = await client.post("/classify", json=IMAGE | {"top_k": 3})
    assert starting.status_code == 503
    assert starting.json()["error"]["code"] == "not_ready"
    assert early.status_code == 503
    assert ready.status_code == 200
    version = described["versions"][0]
    assert version["method"] == "zeroshot"
    assert version["backbone"]["spec"] == "mini"
    assert version["class_names"] == color_shape_classes()
    assert version["num_classes"] == 64
    assert version["training"]["data"] == "synthetic:color-shape"
    assert classified.status_code == 200
    assert len(classified.json()["predictions"][0]) == 3

    async with serve(settings) as (client, _):  # a restart finds it and creates nothing
        listing = (await client.get("/classifiers")).json()
    assert listing["classifiers"] == [
        {
            "name": "default",
            "versions": ["1"],
            "latest": "1",
            "default": True,
            "aliases": {"latest": "1"},
        }
    ]
