"""The dot-directory entries of an object store mirror (`service.objectstore`): content that
versions share (``<prefix>/.backbones/<key>``, a folder or a file), copied whole, whatever its
names. An entry is visible once its ``.mirror-complete`` marker is (uploaded last).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from promptserve.models.artifact import TEMP_PREFIX
from promptserve.service.store_transfer import (
    COMPLETE_MARKER,
    download_file,
    download_folder,
    upload_folder,
)

log = logging.getLogger(__name__)


def remote_entries(fs: Any, base: str, local_only: tuple[str, ...]) -> set[str]:
    """Complete dot-directory entries, as ``.dir/key`` paths: a folder whose marker
    ``.dir/key/.mirror-complete`` is there, or a file whose ``.dir/key.mirror-complete`` is."""
    entries = set()
    for path in fs.glob(f"{base}/.*/*{COMPLETE_MARKER}"):
        directory, key = path.rstrip("/").split("/")[-2:]
        entries.add(f"{directory}/{key.removesuffix(COMPLETE_MARKER)}")
    for path in fs.glob(f"{base}/.*/*/{COMPLETE_MARKER}"):
        entries.add("/".join(path.rstrip("/").split("/")[-3:-1]))
    return {
        e
        for e in entries
        if e.split("/")[0] not in local_only and not e.startswith(TEMP_PREFIX) and e[-1] != "/"
    }


def local_entries(local: Path, local_only: tuple[str, ...]) -> set[str]:
    entries = set()
    for directory in local.glob(".*") if local.is_dir() else ():
        if directory.name in local_only or directory.name.startswith(TEMP_PREFIX):
            continue
        if directory.is_dir():
            entries |= {f"{directory.name}/{p.name}" for p in directory.iterdir()}
    return {e for e in entries if not e.split("/")[1].startswith(TEMP_PREFIX)}


def pull_entries(fs: Any, base: str, local: Path, local_only: tuple[str, ...]) -> None:
    """Download the complete remote entries the local directory lacks."""
    for entry in sorted(remote_entries(fs, base, local_only) - local_entries(local, local_only)):
        if fs.isfile(f"{base}/{entry}"):
            download_file(fs, f"{base}/{entry}", local / entry)
        elif download_folder(fs, f"{base}/{entry}", local / entry, COMPLETE_MARKER):
            log.info("downloaded %s from %s", entry, base)


def push_entries(fs: Any, base: str, local: Path, local_only: tuple[str, ...]) -> None:
    """Upload the local entries the store lacks, each marker last."""
    for entry in sorted(local_entries(local, local_only) - remote_entries(fs, base, local_only)):
        source = local / entry
        if source.is_dir():
            upload_folder(fs, source, f"{base}/{entry}", marker=None)
            fs.pipe_file(f"{base}/{entry}/{COMPLETE_MARKER}", b"")
        elif source.is_file():
            fs.put_file(str(source), f"{base}/{entry}")
            fs.pipe_file(f"{base}/{entry}{COMPLETE_MARKER}", b"")
