"""First start on an empty store: 503 while the default classifier is created on the `mini`
backbone (the one slow test of this package: a mini export), then ready; a restart reuses it."""

from __future__ import annotations

import os
import subprocess
import sys
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


# a fresh interpreter: what a `promptserve serve` process loads to serve published classifiers
LEAN_PROBE = """
import io, sys, time
from fastapi.testclient import TestClient
from PIL import Image
from promptserve.service.app import create_app
from promptserve.service.cli import build_parser
build_parser()  # every command's options, as `promptserve serve` parses them
def encoded(fmt):
    out = io.BytesIO()
    Image.new("RGB", (48, 40), (200, 30, 30)).save(out, fmt)
    return out.getvalue()
with TestClient(create_app()) as client:
    deadline = time.monotonic() + 240  # the classifiers load in the background
    while client.get("/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.1)
    files = [("images", ("a.png", encoded("PNG"))), ("images", ("b.jpg", encoded("JPEG")))]
    answer = client.post("/classify", files=files, data={"top_k": "2"})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["predictions"]) == 2
HEAVY = ("open_clip", "torchvision", "timm", "torch._dynamo", "onnxscript")
print(sorted(name for name in HEAVY if name in sys.modules))
"""


@pytest.mark.slow
def test_serving_published_classifiers_loads_no_open_clip_or_torchvision(mini_store: Path) -> None:
    # they bring timm and torch's compiler: seconds of every server and worker start, and memory
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTSERVE_")}
    env |= {"HF_HUB_OFFLINE": "1", "PROMPTSERVE_STORE": str(mini_store)}
    done = subprocess.run(
        [sys.executable, "-c", LEAN_PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
