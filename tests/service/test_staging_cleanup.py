"""Staging folders left by a publisher that was killed (SIGKILL mid-export, mid-download) are
removed at the next start, however young; the folder of a publish still running in another
live process stays (`models.versions.owned_staging`: a shared flock the kernel drops when its
holder dies)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from promptserve.models.versions import STALE_STAGING_FILE_S
from promptserve.service.catalog import Catalog
from tests.service.helpers import ClientFactory

PUBLISHER = """
import sys
from pathlib import Path
from promptserve.models.versions import owned_staging
with owned_staging(Path(sys.argv[1]), ".tmp-") as staging:
    (staging / "visual.onnx").write_bytes(b"half an export")
    print(staging, flush=True)
    sys.stdin.read()  # until told to end (or killed)
"""


def start_publisher(parent: Path) -> tuple[subprocess.Popen[str], Path]:
    """A process that holds a staging folder under `parent` mid-export; returns it and the
    folder once the folder is there."""
    process = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, str(parent)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, Path(process.stdout.readline().strip())


@pytest.mark.anyio
async def test_the_next_start_removes_staging_of_killed_publishers_only(
    client_factory: ClientFactory, store: Path
) -> None:
    graphs = next((store / ".backbones").glob("*/graphs"))
    killed = [start_publisher(parent) for parent in (store / "shapes", graphs)]
    for process, _ in killed:
        os.kill(process.pid, signal.SIGKILL)  # mid-publish: nothing removes its folder
        process.wait()
    live, running = start_publisher(store / "shapes")
    try:
        assert all(folder.is_dir() for _, folder in killed)  # seconds old, not an hour
        async with client_factory() as (client, _):
            assert (await client.get("/health/ready")).status_code == 200
        assert not any(folder.exists() for _, folder in killed)
        assert running.is_dir()  # its publisher is alive: left alone
        assert Catalog(store).remove_orphaned_staging() == []
    finally:
        assert live.stdin is not None
        live.stdin.close()
        live.wait(timeout=60)
    assert Catalog(store).remove_orphaned_staging() == [running]  # its holder has ended


def test_staging_files_are_removed_once_stale_and_fresh_ones_stay(store: Path) -> None:
    """A writer of an alias file or a backbone record killed between write and rename leaves a
    `.tmp-*` file; it is removed once it is STALE_STAGING_FILE_S old, and a fresh one (a write
    in progress) stays."""
    backbone = next((store / ".backbones").iterdir())
    stale = [store / "shapes" / ".tmp-aliases.json-1", backbone / ".tmp-2.json"]
    fresh = store / "shapes" / ".tmp-aliases.json-3"
    old = time.time() - STALE_STAGING_FILE_S - 5
    for path in [*stale, fresh]:
        path.write_text("{}")
    for path in stale:
        os.utime(path, (old, old))
    assert sorted(Catalog(store).remove_orphaned_staging()) == sorted(stale)
    assert fresh.is_file()
    assert not any(path.exists() for path in stale)
