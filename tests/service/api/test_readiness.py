"""Readiness follows the default classifier after start-up: 503 `not_ready` with the reason
whenever its newest version can no longer be served (removed, files deleted, damaged), 200
again once it can."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.service.helpers import ClientFactory

pytestmark = pytest.mark.anyio


def _remove_classifier(store: Path) -> None:
    shutil.rmtree(store / "default")


def _remove_manifest(store: Path) -> None:
    (store / "default" / "1" / "manifest.json").unlink()


def _remove_tensors(store: Path) -> None:
    (store / "default" / "1" / "classes.safetensors").unlink()


def _garble_manifest(store: Path) -> None:
    (store / "default" / "1" / "manifest.json").write_text("{not json")


def _remove_shared_graph(store: Path) -> None:
    shutil.rmtree(store / ".backbones")


DAMAGE: dict[str, Callable[[Path], None]] = {
    "classifier removed": _remove_classifier,
    "manifest deleted": _remove_manifest,
    "class embeddings deleted": _remove_tensors,
    "manifest unreadable": _garble_manifest,
    "shared graph deleted": _remove_shared_graph,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
async def test_ready_is_503_once_the_default_cannot_be_served(
    client_factory: ClientFactory, store: Path, tmp_path: Path, damage: str
) -> None:
    backup = shutil.copytree(store, tmp_path / "backup")
    async with client_factory() as (client, _):
        assert (await client.get("/health/ready")).status_code == 200
        DAMAGE[damage](store)
        broken = await client.get("/health/ready")
        live = await client.get("/health/live")
        shutil.rmtree(store)
        shutil.copytree(backup, store)  # put back: ready again, without a restart
        restored = await client.get("/health/ready")
    assert broken.status_code == 503, broken.text
    error = broken.json()["error"]
    assert error["code"] == "not_ready"
    assert "default classifier" in error["message"]
    assert str(store) not in error["message"]  # no server paths in the answer
    assert live.status_code == 200
    assert restored.status_code == 200, restored.text
