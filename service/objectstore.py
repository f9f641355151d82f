"""The classifier store on object storage: ``PROMPTSERVE_STORE=s3://bucket/prefix``.

The object store is the source of truth; each process keeps a local directory that mirrors it
and serves from there (`service.catalog` reads only local files). The mirror is generic over
what a version holds: it copies every file of ``<name>/<version>/`` and every entry of a
dot-directory (``<prefix>/.backbones/<key>/``, say: content-addressed files that versions
share), whatever their names.

Keys of versions are immutable: a published version is never overwritten. The one mutable key
per classifier is its aliases file (``<name>/aliases.json``, `service.aliases`): a change is
read from the store, applied and uploaded at once (`pull_aliases`, then `push_aliases`), and
every pull downloads the files that differ from the local copies; two replicas changing the
aliases of one classifier in the same instant may lose one of the two changes (the last upload
wins), never corrupt the file. Visibility is manifest-last (`service.store_transfer`): a
version's other files are uploaded first and ``manifest.json`` last, so a reader that lists
manifests never sees half a version; a dot-directory entry is visible once its
``.mirror-complete`` marker is (uploaded last). Deleting removes the manifest first.

`pull` (every few seconds, from `service.store_sync.StoreSync`) downloads versions the local
directory lacks (into a staging folder, renamed into place), removes local versions that were
deleted remotely, and uploads versions that were created locally and never seen remotely (the
default classifier a fresh replica creates on start-up), but never one of a name a job process
of this host is publishing: the job uploads its own (`service.publishing`). Workers publish
with `push`, which renumbers a version when another host took its number, or a later one,
meanwhile; a start-up default whose number another replica took (replicas started together on
an empty bucket) is dropped for theirs instead, so a fresh cluster has one default version, not
one per replica. A number is never handed out twice, deletes included: ``<name>/.last-version``
records the highest one (`models.versions`; absent in an older store: its highest version),
written before the version's files, under `publish_lock` (Postgres: one host at a time). Remote
listings go through fsspec (s3fs for ``s3://``), with no listing cache: every pull sees the
bucket as it is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptserve.models.artifact import MANIFEST_FILE, TEMP_PREFIX, VERSION_PATTERN, list_versions
from promptserve.models.versions import COUNTER_FILE, version_counter
from promptserve.service.aliases import ALIASES_FILE, write_file_atomically
from promptserve.service.object_calls import CallLimits, open_filesystem
from promptserve.service.publishing import no_job_publishing
from promptserve.service.settings import Settings, is_store_url
from promptserve.service.store_entries import pull_entries, push_entries
from promptserve.service.store_transfer import (
    download_folder,
    read_counter,
    same_file,
    upload_folder,
    write_counter,
)

log = logging.getLogger(__name__)

LOCAL_ONLY = (".jobs",)  # dot-directories that stay on their host
PUSH_ATTEMPTS = 20  # version numbers tried when other hosts keep taking the next one
PublishLock = Callable[[str], AbstractContextManager[None]]
STARTUP_CREATOR = "service start-up"  # `training.created_by` of the default made at start-up


@dataclass
class PullReport:
    added: list[tuple[str, str]] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)
    pushed: list[tuple[str, str]] = field(default_factory=list)


class StoreMirror:
    """Mirror the classifier store at `url` into the local directory `local`."""

    def __init__(
        self,
        url: str,
        local: Path,
        *,
        endpoint_url: str | None = None,
        fs: Any = None,
        publish_lock: PublishLock = lambda name: contextlib.nullcontext(),
        limits: CallLimits | None = None,
    ) -> None:
        if not is_store_url(url):
            raise ValueError(f"not an object store URL: {url!r} (expected s3://bucket/prefix)")
        self.url = url.rstrip("/")
        self.base = self.url.split("://", 1)[1]  # bucket/prefix, as fsspec names paths
        self.local = Path(local)
        self.fs = fs if fs is not None else open_filesystem(url, endpoint_url, limits)
        self.seen: set[tuple[str, str]] = set()  # versions this process has seen remotely
        self.lock = threading.Lock()  # one pull or delete at a time in this process
        # held while a version number is taken in the store: across hosts with Postgres
        # (`JobStore.publish_lock`), so two hosts never take one number
        self.publish_lock = publish_lock

    # --- reading the remote ---------------------------------------------------------------

    def remote_versions(self) -> set[tuple[str, str]]:
        """Published (name, version) pairs: those whose manifest is there."""
        found = set()
        for path in self.fs.glob(f"{self.base}/*/*/{MANIFEST_FILE}"):
            name, version = path.rstrip("/").split("/")[-3:-1]
            if not name.startswith(".") and VERSION_PATTERN.fullmatch(version):
                found.add((name, version))
        return found

    def local_versions(self) -> set[tuple[str, str]]:
        if not self.local.is_dir():
            return set()
        return {
            (child.name, version)
            for child in self.local.iterdir()
            if child.is_dir() and not child.name.startswith(".")
            for version in list_versions(self.local, child.name)
        }

    # --- one synchronisation ----------------------------------------------------------------

    def pull(self) -> PullReport:
        """Make the local directory match the remote store (see the module docstring)."""
        with self.lock:
            return self._pull()

    def _pull(self) -> PullReport:
        report = PullReport()
        pull_entries(self.fs, self.base, self.local, LOCAL_ONLY)
        remote = self.remote_versions()
        local = self.local_versions()
        for name, version in sorted(remote - local):
            self._download(f"{name}/{version}", self.local / name / version, marker=MANIFEST_FILE)
            report.added.append((name, version))
        for name, version in sorted((self.seen - remote) & local):
            self._remove_local(name, version)
            report.removed.append((name, version))
        for name, version in sorted(local - remote - self.seen):
            with self.publish_lock(name), no_job_publishing(self.local, name) as free:
                if not free:  # a job here publishes `name`: it uploads its own version
                    continue
                made_here = self._made_at_start_up(name, version)
                pushed = self._push(name, version, renumber=not made_here)
            if pushed is not None:
                report.pushed.append((name, pushed))
        self.seen = remote | set(report.pushed)
        self._sync_aliases()
        return report

    # --- aliases files ------------------------------------------------------------------------

    def _sync_aliases(self) -> None:
        """Download the aliases files that differ from the local ones; upload a local one the
        store lacks (written here while the store could not be reached)."""
        remote = set()
        for path in self.fs.glob(f"{self.base}/*/{ALIASES_FILE}"):
            name = path.rstrip("/").split("/")[-2]
            if not name.startswith("."):
                remote.add(name)
                self.pull_aliases(name)
        for local in self.local.glob(f"*/{ALIASES_FILE}") if self.local.is_dir() else ():
            name = local.parent.name
            if not name.startswith(".") and name not in remote:
                self.push_aliases(name)

    def pull_aliases(self, name: str) -> None:
        """The store's aliases file of `name` into the local directory, if it differs."""
        try:
            data = self.fs.cat_file(f"{self.base}/{name}/{ALIASES_FILE}")
        except FileNotFoundError:
            return
        local = self.local / name / ALIASES_FILE
        try:
            same = local.read_bytes() == data
        except OSError:
            same = False
        if not same:
            write_file_atomically(local, data)
            log.info("aliases of %s updated from %s", name, self.url)

    def push_aliases(self, name: str) -> None:
        """Upload the local aliases file of `name` (one object, replaced whole)."""
        local = self.local / name / ALIASES_FILE
        self.fs.pipe_file(f"{self.base}/{name}/{ALIASES_FILE}", local.read_bytes())

    def push(self, name: str, version: str) -> str:
        """Upload local version `name/version` manifest-last and return its remote version:
        the same, or the next number never handed out when another host published that one
        (or a later one) meanwhile (the local copy is renumbered to match)."""
        with self.publish_lock(name):
            pushed = self._push(name, version, renumber=True)
        assert pushed is not None  # only a push that may not renumber drops its version
        return pushed

    def _push(self, name: str, version: str, *, renumber: bool) -> str | None:
        """`push`; with `renumber` False a taken number drops the local copy instead (None:
        the next pull downloads the other host's)."""
        push_entries(self.fs, self.base, self.local, LOCAL_ONLY)
        for _ in range(PUSH_ATTEMPTS):
            taken = {v for n, v in self.remote_versions() if n == name}
            key = f"{self.base}/{name}/{version}"
            if version in taken and same_file(
                self.fs, f"{key}/{MANIFEST_FILE}", self.local / name / version / MANIFEST_FILE
            ):
                self.seen.add((name, version))  # this very version, uploaded by its publisher
                return version
            last = max({int(v) for v in taken} | {read_counter(self.fs, self._counter(name))})
            if int(version) > last:  # never handed out: recorded first, then made visible
                write_counter(self.fs, self._counter(name), int(version))
                upload_folder(self.fs, self.local / name / version, key, MANIFEST_FILE)
                self.seen.add((name, version))
                log.info("uploaded classifier %s version %s to %s", name, version, self.url)
                return version
            if not renumber:
                self._remove_local(name, version)
                log.info("%s version %s was published by another host first", name, version)
                return None
            version = self._renumber(name, version, last)
        raise RuntimeError(f"could not find a free version of {name} in {self.url}")

    def _counter(self, name: str) -> str:
        return f"{self.base}/{name}/{COUNTER_FILE}"

    def _made_at_start_up(self, name: str, version: str) -> bool:
        """Whether the local version is a default classifier created at start-up (any replica
        makes the same one, so another's serves as well)."""
        try:
            manifest = json.loads((self.local / name / version / MANIFEST_FILE).read_text("utf-8"))
        except (OSError, ValueError):
            return False
        training = manifest.get("training") if isinstance(manifest, dict) else None
        return isinstance(training, dict) and training.get("created_by") == STARTUP_CREATOR

    def delete(self, name: str, version: str) -> None:
        """Remove a version remotely: its manifest first, so no replica downloads it again.
        It stays in `seen`, so the next pull removes any local copy."""
        prefix = f"{self.base}/{name}/{version}"
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(f"{prefix}/{MANIFEST_FILE}")
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(prefix, recursive=True)

    def _download(self, key: str, target: Path, marker: str) -> None:
        if download_folder(self.fs, f"{self.base}/{key}", target, marker):
            log.info("downloaded %s from %s", key, self.url)

    def _remove_local(self, name: str, version: str) -> None:
        directory = self.local / name
        doomed = directory / f"{TEMP_PREFIX}deleted-{uuid.uuid4().hex}"
        with contextlib.suppress(FileNotFoundError):
            (directory / version).rename(doomed)  # atomic: readers see all of it or none
            shutil.rmtree(doomed, ignore_errors=True)
            log.info("classifier %s version %s was deleted from %s", name, version, self.url)
        if not list_versions(self.local, name):
            with contextlib.suppress(OSError):
                directory.rmdir()

    def _renumber(self, name: str, version: str, last: int) -> str:
        """Move local `name/version` to a number above `last` and above every number this
        host handed out for `name` (`models.versions`)."""
        with version_counter(self.local / name) as counter:
            new = str(max(last, counter.last()) + 1)
            counter.record(int(new))
            source, target = self.local / name / version, self.local / name / new
            manifest = json.loads((source / MANIFEST_FILE).read_text(encoding="utf-8"))
            manifest["version"] = new
            (source / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
            source.rename(target)
        log.warning("%s version %s was taken on %s: published as %s", name, version, self.url, new)
        return new


def open_mirror(settings: Settings) -> StoreMirror | None:
    """The mirror of `settings.store_url` into `settings.store`; None for a local store."""
    if settings.store_url is None:
        return None
    return StoreMirror(
        settings.store_url,
        settings.store,
        endpoint_url=settings.s3_endpoint_url,
        limits=CallLimits.of(settings),
    )
