"""Version numbers are never handed out twice: not after a delete, not after deleting every
version, not by publishers racing in several processes (`models.versions`)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from promptserve.models.artifact import publish_classifier
from promptserve.models.backbone import load_backbone
from promptserve.models.methods import create_method
from tests.service.helpers import CLASS_NAMES, ClientFactory, b64, png_bytes

pytestmark = pytest.mark.anyio

IMAGE = {"images": [b64(png_bytes())]}


async def test_a_deleted_version_number_is_never_published_again(
    client_factory: ClientFactory, store: Path
) -> None:
    learner = create_method("zeroshot", load_backbone("tiny"))

    def publish(classes: list[str]) -> str:
        return publish_classifier(learner, classes, store, "shapes").name

    async with client_factory() as (client, _):
        # the template store has shapes/1 and no counter: numbering goes on from its highest
        assert await asyncio.to_thread(publish, CLASS_NAMES) == "2"
        assert (await client.delete("/classifiers/shapes/2")).status_code == 204
        assert await asyncio.to_thread(publish, CLASS_NAMES[:3]) == "3"
        pinned = await client.post("/classify", json=IMAGE | {"classifier": "shapes@2"})
        assert pinned.status_code == 404  # version 2 names nothing now, never another model
        for version in ("3", "1"):
            assert (await client.delete(f"/classifiers/shapes/{version}")).status_code == 204
        assert (await client.get("/classifiers/shapes")).status_code == 404
        assert await asyncio.to_thread(publish, CLASS_NAMES[:2]) == "4"  # not 1 again
        listing = (await client.get("/classifiers/shapes")).json()
    assert [v["version"] for v in listing["versions"]] == ["4"]


CLAIMS = """
import sys
from pathlib import Path
from promptserve.models.versions import version_counter
for _ in range(int(sys.argv[2])):
    with version_counter(Path(sys.argv[1])) as counter:
        print(counter.claim(), flush=True)
"""


def test_publishers_in_several_processes_never_take_one_number(tmp_path: Path) -> None:
    directory = tmp_path / "store" / "cats"
    (directory / "7").mkdir(parents=True)  # an existing store without a counter
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMS, str(directory), "40"], stdout=subprocess.PIPE
        )
        for _ in range(4)
    ]
    numbers = [int(line) for p in processes for line in p.communicate(timeout=120)[0].split()]
    assert all(p.returncode == 0 for p in processes)
    assert sorted(numbers) == list(range(8, 8 + 160))
