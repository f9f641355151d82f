"""The classifier catalog: names, versions, manifests and deletes of the store, no weights.

The directory is the source of truth and is looked at again on every lookup (a stat of the
classifier's directory per request; it is listed again when that changed,
`service.version_listing`), so a version published by a training job or another process is
seen by the next request without a restart. Every API process holds a catalog; loaded
classifiers and their engines are the engine's (`service.classify.cache`).

`describe` is what a request needs of a version before any model runs: its class names (for
the label checks) and its preprocessing (to prepare the pixels), read from its manifest and
kept in a small LRU checked against the manifest's inode and mtime, so a version number that
was deleted and published again is read again, never served stale.

Aliases (`service.alias_index`, `Catalog.aliases`): `resolve` takes a version or an alias; no
version means the alias ``latest`` (the newest version that is not a candidate, unless it was
set explicitly).

Deleting: any version may be deleted except the last remaining version of the default
classifier (409), which would leave the service unable to answer requests that name no
classifier, and a version an alias other than ``latest`` was set to (409: move or delete the
alias first); a ``latest`` pinned to it follows the newest version again. A version is first
renamed to a hidden name (readers never see half of it), then removed. With an object store
behind the local directory (`service.objectstore`) a delete goes through to it, under the
mirror's lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptserve.models.artifact import (
    MANIFEST_FILE,
    TEMP_PREFIX,
    check_name,
    list_versions,
    publish_classifier,
    read_manifest,
    resolve_version,
)
from promptserve.models.backbone import PreprocessConfig
from promptserve.models.classifier import preprocess_from_manifest
from promptserve.models.errors import ArtifactError, UnknownClassifierError, UnknownVersionError
from promptserve.models.graphs import BACKBONES_DIR, GRAPHS_DIR
from promptserve.models.preprocess import FastEvalTransform
from promptserve.models.versions import remove_if_orphaned, remove_if_stale
from promptserve.service import aliases as alias_store
from promptserve.service.alias_index import AliasIndex
from promptserve.service.aliases import LATEST, combine, is_candidate_manifest
from promptserve.service.errors import DeleteRefusedError
from promptserve.service.objectstore import STARTUP_CREATOR
from promptserve.service.version_listing import VersionListing

if TYPE_CHECKING:
    from promptserve.service.objectstore import StoreMirror

log = logging.getLogger(__name__)

Stamp = tuple[int, int]  # (inode, mtime_ns) of a version's manifest.json
MAX_DESCRIBED = 64  # versions whose description is kept


@dataclass(frozen=True)
class VersionInfo:
    """A published version as its manifest describes it: enough to check a request's labels
    and prepare its images, with no weights loaded."""

    name: str
    version: str
    class_names: list[str]
    preprocess: PreprocessConfig
    transform: FastEvalTransform  # as `Classifier.transform`
    stamp: Stamp
    published_as_candidate: bool = False  # a gated job's version that failed its gate


@dataclass(frozen=True)
class Resolved:
    """A classifier reference resolved: the version, and the alias it was chosen by (None when
    the request named the version)."""

    name: str
    version: str
    alias: str | None


class Catalog:
    """Classifiers under `root`: ``<root>/<name>/<version>/`` artifacts (see models.artifact),
    mirrored to an object store when `mirror` is given."""

    def __init__(self, root: Path, mirror: StoreMirror | None = None) -> None:
        self.root = Path(root)
        self.mirror = mirror
        self.on_delete: list[Callable[[str, str], None]] = []  # told (name, version) deleted
        self._described: OrderedDict[tuple[str, str], VersionInfo] = OrderedDict()
        self._lock = threading.Lock()  # guards `_described`
        self.write_lock = threading.Lock()  # one delete or alias change at a time here
        self.aliases = AliasIndex(self)
        self._listing = VersionListing(self.root)

    # --- listing -------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Classifiers with at least one published version, sorted."""
        if not self.root.is_dir():
            return []
        names = []
        for entry in sorted(self.root.iterdir()):
            with contextlib.suppress(ArtifactError):
                if entry.is_dir() and list_versions(self.root, check_name(entry.name)):
                    names.append(entry.name)
        return names

    def versions(self, name: str) -> list[str]:
        """Published versions of `name`, oldest first; UnknownClassifierError when none."""
        versions = self._listing.versions(name)
        if not versions:
            raise UnknownClassifierError(f"no classifier named {name!r}")
        return versions

    def resolve(self, name: str, version: str | None = None) -> str:
        """The version `version` names (a version or an alias; None: ``latest``), checked to
        be published."""
        if version is not None and alias_store.is_version(str(version)):
            return resolve_version(self.root, name, str(version)).name
        versions = self.versions(name)
        alias = LATEST if version is None else str(version)
        return self.aliases.resolve(name, alias, versions)

    def lookup(self, ref: str, version: str | None = None) -> Resolved:
        """A request's classifier reference (``name``, ``name@alias``, ``name@3``) and its
        separate `version` field, resolved."""
        name, selector = combine(ref, version)
        check_name(name)
        resolved = self.resolve(name, selector)
        if selector is None:
            return Resolved(name, resolved, LATEST)
        return Resolved(name, resolved, None if alias_store.is_version(selector) else selector)

    def manifest(self, name: str, version: str) -> dict[str, Any]:
        path = self.root / name / self.resolve(name, version)
        try:
            return read_manifest(path)
        except ArtifactError:
            if not path.is_dir():  # deleted since it was listed
                raise UnknownVersionError(
                    f"classifier {name!r} has no version {version!r}"
                ) from None
            raise

    def stamp(self, name: str, version: str) -> Stamp:
        """The manifest's (inode, mtime_ns): a republished version number has another one."""
        try:
            info = (self.root / name / version / MANIFEST_FILE).stat()
        except OSError:
            raise UnknownVersionError(f"{name} version {version} was just removed") from None
        return info.st_ino, info.st_mtime_ns

    def describe(self, name: str, version: str | None = None) -> VersionInfo:
        """The published version (``latest`` unless named: a version or an alias) from its
        manifest; a listing and a stat or two when cached, cheap enough for the event loop."""
        return self.version_info(name, self.resolve(name, version))

    def version_info(self, name: str, version: str) -> VersionInfo:
        """The description of a resolved version (`describe` without the resolving)."""
        stamp = self.stamp(name, version)
        key = (name, version)
        with self._lock:
            hit = self._described.get(key)
            if hit is not None and hit.stamp == stamp:
                self._described.move_to_end(key)
                return hit
        manifest = self.manifest(name, version)
        preprocess = preprocess_from_manifest(manifest)
        info = VersionInfo(
            name,
            version,
            [str(c) for c in manifest["class_names"]],
            preprocess,
            FastEvalTransform(preprocess),
            stamp,
            is_candidate_manifest(manifest),
        )
        with self._lock:
            self._described[key] = info
            while len(self._described) > MAX_DESCRIBED:
                self._described.popitem(last=False)
        return info

    # --- changing the store --------------------------------------------------------------

    def delete(self, name: str, version: str, *, protected: str | None = None) -> None:
        """Remove one version (here and in the object store); refuse the last version of the
        `protected` (default) name and a version an alias was set to. Blocking: call off the
        loop."""
        if self.mirror is None:
            with self.write_lock:
                self._delete_here(name, version, protected)
            return
        with self.write_lock, self.mirror.lock:  # no pull in between: it would download it again
            resolved = self.resolve(name, version)
            self._deletable(name, resolved, protected)
            self.mirror.delete(
                name, resolved
            )  # first: a store that does not answer changes nothing
            self._delete_here(name, resolved, protected)
            if alias_store.aliases_path(self.root, name).is_file():
                self.mirror.push_aliases(name)

    def _deletable(self, name: str, version: str, protected: str | None) -> dict[str, str]:
        """The explicit aliases of `name`; DeleteRefusedError if `version` may not go."""
        if name == protected and len(self.versions(name)) == 1:
            raise DeleteRefusedError(
                f"{name!r} is the default classifier and {version} is its only version; "
                "publish another version first"
            )
        explicit = self.aliases.explicit(name)
        held = sorted(a for a, v in explicit.items() if v == version and a != LATEST)
        if held:
            raise DeleteRefusedError(
                f"{name} version {version} is what alias(es) {', '.join(held)} point at: "
                "set them to another version or delete them first"
            )
        return explicit

    def _delete_here(self, name: str, version: str, protected: str | None) -> None:
        version = self.resolve(name, version)
        explicit = self._deletable(name, version, protected)
        if explicit.get(LATEST) == version:  # a pinned latest follows the newest again
            del explicit[LATEST]
            alias_store.write_aliases(self.root, name, explicit)
        directory = self.root / name
        doomed = directory / f"{TEMP_PREFIX}deleted-{uuid.uuid4().hex}"
        os.rename(directory / version, doomed)  # atomic: readers see all of it or none
        for forget in self.on_delete:
            forget(name, version)
        shutil.rmtree(doomed, ignore_errors=True)
        if not list_versions(self.root, name):
            with contextlib.suppress(OSError):  # only if nothing else (a staging dir) is there
                directory.rmdir()
        log.info("deleted classifier %s version %s", name, version)

    def remove_orphaned_staging(self) -> list[Path]:
        """Remove the staging folders (``<name>/.tmp-*``, ``.backbones/*/graphs/.tmp-*``) that
        no live process holds: left by exports, downloads or deletes that were killed, however
        young; one an export of another process is still writing is held (`owned_staging`) and
        stays. Staging files (an alias file or a backbone record written beside its place, a
        one-file download) are not held: one is removed once `STALE_STAGING_FILE_S` old. Returns
        what was removed."""
        patterns = (
            f"*/{TEMP_PREFIX}*",
            f"{BACKBONES_DIR}/*/{TEMP_PREFIX}*",
            f"{BACKBONES_DIR}/*/{GRAPHS_DIR}/{TEMP_PREFIX}*",
        )
        found = [p for pattern in patterns for p in self.root.glob(pattern)]
        removed = [p for p in found if (remove_if_orphaned if p.is_dir() else remove_if_stale)(p)]
        if removed:
            log.warning("removed %d staging item(s) left by interrupted writes", len(removed))
        return removed

    def ensure_default(self, name: str, backbone: str) -> bool:
        """Create `name` as zeroshot over the colour-shape classes unless it exists.

        Returns True when it was created. Blocking (an export takes seconds): call off the loop.
        """
        if list_versions(self.root, name):
            return False
        log.info("store %s has no %r classifier: creating it on %s", self.root, name, backbone)
        create_default_classifier(self.root, name, backbone)
        return True


def create_default_classifier(root: Path, name: str, backbone: str) -> Path:
    """Publish zeroshot over the synthetic world's 64 colour-shape classes as `name`."""
    from promptserve.models.backbone import load_backbone
    from promptserve.models.methods import create_method
    from promptserve.training.api import world_class_names

    learner = create_method("zeroshot", load_backbone(backbone))
    summary = {"data": "synthetic:color-shape", "created_by": STARTUP_CREATOR}
    return publish_classifier(learner, world_class_names(), root, name, training=summary)
