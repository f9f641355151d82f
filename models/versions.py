"""Version numbers that are never handed out twice, and staging folders a publisher owns.

Each classifier directory records the highest version number it ever published in
``<name>/.last-version``. A delete leaves the file in place, so ``DELETE /classifiers/x/2``
followed by a new job publishes 3, and deleting every version does not start again at 1: a
version number names one artifact for good (a job record's ``result.version`` and a client
that pinned it never silently move to another model). A store written before the counter
existed starts from its highest version folder.

The counter file is also the lock (an exclusive ``flock``): a publisher holds it while it picks
a number, records it and renames its staging folder into place, so two exporters on one host
never pick one number, and a number is recorded before it becomes visible (a publisher killed
in between skips a number, never reuses one). ``flock`` rather than a lock library: the kernel
releases it when the holder dies, with no stale lock file to break, and the same call on a
staging folder tells whether its publisher is still alive (`owned_staging`,
`remove_if_orphaned`).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

VERSION_PATTERN = re.compile(r"[1-9][0-9]{0,17}")
COUNTER_FILE = ".last-version"
COUNTER_MODE = 0o644


def highest_version(directory: Path) -> int:
    """The highest version number among the entries of a classifier directory (0 if none)."""
    if not directory.is_dir():
        return 0
    found = [int(p.name) for p in directory.iterdir() if VERSION_PATTERN.fullmatch(p.name)]
    return max(found, default=0)


class VersionCounter:
    """The counter of one classifier directory, held locked (`version_counter`)."""

    def __init__(self, fd: int, directory: Path) -> None:
        self._fd = fd
        self.directory = directory

    def last(self) -> int:
        """The highest number handed out: the recorded one, or a higher version folder."""
        return max(self._recorded(), highest_version(self.directory))

    def record(self, version: int) -> None:
        """Record `version` as handed out (durably; the counter never goes down)."""
        if version <= self._recorded():
            return
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{version}\n".encode(), 0)
        os.fsync(self._fd)

    def claim(self) -> int:
        """The next number never handed out, recorded as handed out."""
        version = self.last() + 1
        self.record(version)
        return version

    def _recorded(self) -> int:
        text = os.pread(self._fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if VERSION_PATTERN.fullmatch(text) else 0


@contextmanager
def version_counter(directory: Path) -> Iterator[VersionCounter]:
    """The counter of classifier directory `directory`, locked against every other publisher
    on this host until the block ends."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / COUNTER_FILE, os.O_RDWR | os.O_CREAT, COUNTER_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield VersionCounter(fd, directory)
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def owned_staging(parent: Path, prefix: str) -> Iterator[Path]:
    """A new staging folder ``<parent>/<prefix><hex>`` that this process holds a shared
    ``flock`` on until the block ends, so start-up cleanup (`remove_if_orphaned`) leaves it
    alone while its publisher lives, and removes it once the publisher was killed."""
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        staging = parent / f"{prefix}{uuid.uuid4().hex}"
        staging.mkdir()
        fd = os.open(staging, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            if os.stat(staging).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # a cleanup removed it between the mkdir and the lock: take another
    try:
        yield staging
    finally:
        os.close(fd)


def remove_if_orphaned(staging: Path) -> bool:
    """Remove `staging` if no live process holds it (`owned_staging`): its publisher was
    killed, or it is a leftover of a delete or a download. The folder is held while it is
    removed, so a publisher that created it a moment ago waits, finds it gone and takes
    another. Returns whether it was removed."""
    try:
        fd = os.open(staging, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    try:
        shutil.rmtree(staging, ignore_errors=True)
    finally:
        os.close(fd)
    return True


# a staging file is written and renamed within milliseconds; one this old lost its writer
STALE_STAGING_FILE_S = 600.0


def remove_if_stale(path: Path) -> bool:
    """Remove the staging file `path` if it is STALE_STAGING_FILE_S old; whether it was."""
    try:
        if not path.is_file() or time.time() - path.stat().st_mtime < STALE_STAGING_FILE_S:
            return False
        path.unlink()
    except FileNotFoundError:  # renamed into place or removed meanwhile
        return False
    return True
