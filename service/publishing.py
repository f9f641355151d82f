"""Who is publishing a classifier on this host: the guard between a job and the store sync.

With an object store, a job process publishes its version into the host's local copy of the
store first, then uploads it (`service.jobs.process`), while the replica's own sync
(`service.objectstore.StoreMirror.pull`) uploads versions it finds only locally (a start-up
default). Without a guard the sync finds the job's fresh version between the two steps, uploads
it as well and renumbers one of the two copies: every job published twice.

So a job process holds a shared ``flock`` on ``<store>/<name>/.publishing`` from before it
trains until its upload has ended (`job_publishing`); jobs of one name share it, and the kernel
drops it when the process dies. The sync uploads a local-only version of a name only while it
holds the same lock exclusively (`no_job_publishing`), and skips the name for this round when a
job holds it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

GUARD_FILE = ".publishing"


def _open(store: Path, name: str) -> int:
    directory = Path(store) / name
    directory.mkdir(parents=True, exist_ok=True)
    return os.open(directory / GUARD_FILE, os.O_RDWR | os.O_CREAT, 0o644)


@contextmanager
def job_publishing(store: Path, name: str, *, enabled: bool = True) -> Iterator[None]:
    """Held by a job process while it may publish or upload a version of `name` (waits while
    the sync uploads one of `name`'s versions). Nothing when not `enabled` (a local store)."""
    if not enabled:
        yield
        return
    fd = _open(store, name)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


@contextmanager
def no_job_publishing(store: Path, name: str) -> Iterator[bool]:
    """Yields True while no job process on this host publishes `name` (and none can start to
    until the block ends); False at once when one does."""
    fd = _open(store, name)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
