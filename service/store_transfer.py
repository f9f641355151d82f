"""Copying folders between an object store (an fsspec filesystem) and the local directory,
in the order that keeps readers from seeing half of one (`service.objectstore`).

An upload sends the folder's marker file last (``manifest.json`` for a version), so a reader
that lists markers sees the whole folder or nothing. A download fetches into a staging folder
beside its target and renames it into place, so a local reader sees the same.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

from promptserve.models.artifact import TEMP_PREFIX
from promptserve.models.versions import VERSION_PATTERN, owned_staging

COMPLETE_MARKER = ".mirror-complete"  # last object of a dot-directory entry


def upload_folder(fs: Any, source: Path, prefix: str, marker: str | None) -> None:
    """Every file under `source` to ``<prefix>/<relative path>``, `marker` last."""
    files = sorted(p for p in source.rglob("*") if p.is_file())
    for path in sorted(files, key=lambda p: p.name == marker):  # the marker goes last
        fs.put_file(str(path), f"{prefix}/{path.relative_to(source)}")


def download_folder(fs: Any, prefix: str, target: Path, marker: str) -> bool:
    """The files under `prefix` into `target` (through a staging folder renamed into place);
    False when nothing was renamed in: the folder lost its `marker` (deleted while it was read)
    or another process renamed the same folder in first."""
    prefix = f"{prefix}/"
    with owned_staging(target.parent, f"{TEMP_PREFIX}pull-") as staging:
        try:
            for path in fs.find(prefix):
                relative = path[len(prefix) :]
                if relative == COMPLETE_MARKER:
                    continue
                (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(path, str(staging / relative))
            if marker != COMPLETE_MARKER and not (staging / marker).is_file():
                return False  # deleted while we read it
            staging.rename(target)
            return True
        except OSError:
            if not target.exists():
                raise
            return False
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def download_file(fs: Any, key: str, target: Path) -> None:
    """The object `key` into `target` (written beside it, then renamed into place)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f"{TEMP_PREFIX}pull-{uuid.uuid4().hex}"
    try:
        fs.get_file(key, str(staging))
        staging.rename(target)
    finally:
        staging.unlink(missing_ok=True)


def read_counter(fs: Any, key: str) -> int:
    """The version counter object `key` (`models.versions`: the highest number ever handed
    out under one name); 0 when absent (a store written before counters existed)."""
    try:
        text = fs.cat_file(key).decode("ascii", "replace").strip()
    except FileNotFoundError:
        return 0
    return int(text) if VERSION_PATTERN.fullmatch(text) else 0


def write_counter(fs: Any, key: str, version: int) -> None:
    fs.pipe_file(key, f"{version}\n".encode())


def same_file(fs: Any, key: str, local: Path) -> bool:
    """Whether object `key` holds exactly the bytes of the local file `local`."""
    try:
        return bool(fs.cat_file(key) == local.read_bytes())
    except (FileNotFoundError, OSError):
        return False
