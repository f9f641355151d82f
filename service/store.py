"""The classifier store as the service sees it: list, load (verified, cached), delete, create.

The directory is the source of truth and is read again on every lookup (a directory listing
per request, microseconds), so a version published by a training job or another process is
served by the next request without a restart. Loaded versions are kept in a small LRU cache,
keyed by name and version and checked against the manifest's inode and mtime, so a version
number that was deleted and published again is reloaded, never served stale.

Format-2 versions run on their store's shared graphs through one `EnginePool`: classifiers on
the same backbone graph share one engine, and loading one reads only its own small tensors.
`max_loaded` bounds loaded classifiers; engines live while a loaded classifier uses them.

Deleting: any version may be deleted except the last remaining version of the default
classifier (409), which would leave the service unable to answer requests that name no
classifier. A version is first renamed to a hidden name (readers never see half of it), then
removed. Requests already holding the loaded version finish with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptserve.models.artifact import (
    MANIFEST_FILE,
    TEMP_PREFIX,
    check_name,
    export_classifier,
    list_versions,
    read_manifest,
    resolve_version,
)
from promptserve.models.classifier import Classifier, load_classifier
from promptserve.models.engine_pool import EnginePool
from promptserve.models.engines import Engine, OnnxOptions
from promptserve.models.errors import ArtifactError, UnknownClassifierError, UnknownVersionError
from promptserve.models.graphs import BACKBONES_DIR, GRAPHS_DIR
from promptserve.service.errors import DeleteRefusedError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    """A cached classifier and the manifest stamp it was loaded from."""

    classifier: Classifier
    stamp: tuple[int, int]  # (inode, mtime_ns) of manifest.json


class ClassifierStore:
    """Classifiers under `root`: ``<root>/<name>/<version>/`` artifacts (see models.artifact)."""

    def __init__(
        self,
        root: Path,
        *,
        engine: Engine = "onnx",
        device: str = "cpu",
        onnx_threads: int | None = None,
        max_loaded: int = 8,
        onnx_options: OnnxOptions | None = None,
    ) -> None:
        self.root = Path(root)
        self.engine: Engine = engine
        self.device = device
        self.onnx_threads = onnx_threads
        self.onnx_options = onnx_options  # fp16, IO binding, TensorRT (models.engines)
        self.max_loaded = max_loaded
        self.engines = EnginePool(engine, device, onnx_threads, options=onnx_options)
        self._cache: OrderedDict[tuple[str, str], Loaded] = OrderedDict()
        self._lock = threading.Lock()  # guards the cache
        self._load_lock = threading.Lock()  # serialises loads (rare, and memory-heavy)

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
        versions = list_versions(self.root, name)
        if not versions:
            raise UnknownClassifierError(f"no classifier named {name!r}")
        return versions

    def resolve(self, name: str, version: str | None = None) -> str:
        """The newest version of `name`, or `version` after checking it is published."""
        return resolve_version(self.root, name, version).name

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

    # --- loading -------------------------------------------------------------------------

    def get(self, name: str, version: str | None = None) -> Classifier:
        """The loaded classifier (newest version unless named); blocking: call off the loop."""
        version = self.resolve(name, version)
        path = self.root / name / version
        key = (name, version)
        stamp = _stamp(path)
        hit = self._cached(key, stamp)
        if hit is not None:
            return hit
        with self._load_lock:  # one load at a time; cache hits never wait for it
            hit = self._cached(key, stamp)
            if hit is not None:
                return hit
            classifier = self._load(path)
            with self._lock:
                self._cache[key] = Loaded(classifier, stamp)
                while len(self._cache) > self.max_loaded:
                    evicted, _ = self._cache.popitem(last=False)
                    log.info("unloaded classifier %s version %s (cache full)", *evicted)
        return classifier

    def get_loaded(self, name: str, version: str | None = None) -> Classifier | None:
        """The classifier when it is already loaded and still current, else None (never loads).

        A directory listing and a stat, microseconds: cheap enough for the event loop, which
        saves a thread hop per request; `get` (in a thread) does the loading on a miss.
        """
        version = self.resolve(name, version)
        return self._cached((name, version), _stamp(self.root / name / version))

    def _cached(self, key: tuple[str, str], stamp: tuple[int, int]) -> Classifier | None:
        with self._lock:
            hit = self._cache.get(key)
            if hit is None or hit.stamp != stamp:
                return None
            self._cache.move_to_end(key)
            return hit.classifier

    def loaded(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._cache)

    def loaded_bytes(self) -> int:
        """Memory held by the loaded classifiers' own tensors (engines not counted)."""
        with self._lock:
            return sum(entry.classifier.own_bytes for entry in self._cache.values())

    def engine_count(self) -> int:
        """Distinct engines the loaded classifiers run on (a shared graph counts once)."""
        with self._lock:
            return len({entry.classifier.engine_key for entry in self._cache.values()})

    def _load(self, path: Path) -> Classifier:
        classifier = load_classifier(
            path,
            engine=self.engine,
            device=self.device,
            threads=self.onnx_threads,
            options=self.onnx_options,
            engines=self.engines,
        )
        log.info(
            "loaded classifier %s version %s (%d classes, %s on %s)",
            classifier.name,
            classifier.version,
            len(classifier.class_names),
            self.engine,
            self.device,
        )
        return classifier

    # --- changing the store --------------------------------------------------------------

    def delete(self, name: str, version: str, *, protected: str | None = None) -> None:
        """Remove one version; refuse the last version of the `protected` (default) name."""
        version = self.resolve(name, version)
        if name == protected and len(self.versions(name)) == 1:
            raise DeleteRefusedError(
                f"{name!r} is the default classifier and {version} is its only version; "
                "publish another version first"
            )
        directory = self.root / name
        doomed = directory / f"{TEMP_PREFIX}deleted-{uuid.uuid4().hex}"
        os.rename(directory / version, doomed)  # atomic: readers see all of it or none
        with self._lock:
            self._cache.pop((name, version), None)
        shutil.rmtree(doomed, ignore_errors=True)
        if not list_versions(self.root, name):
            with contextlib.suppress(OSError):  # only if nothing else (a staging dir) is there
                directory.rmdir()
        log.info("deleted classifier %s version %s", name, version)

    def remove_stale_staging(self, older_than_s: float) -> list[Path]:
        """Remove staging folders (``<name>/.tmp-*``) left by exports that were killed, once
        they are `older_than_s` old (a younger one may belong to an export still running in
        another process). Returns what was removed."""
        removed = []
        cutoff = time.time() - older_than_s
        patterns = (f"*/{TEMP_PREFIX}*", f"{BACKBONES_DIR}/*/{GRAPHS_DIR}/{TEMP_PREFIX}*")
        found = [p for pattern in patterns for p in self.root.glob(pattern)]
        for staging in found if self.root.is_dir() else ():
            with contextlib.suppress(OSError):
                if staging.is_dir() and staging.stat().st_mtime < cutoff:
                    shutil.rmtree(staging)
                    removed.append(staging)
        if removed:
            log.warning("removed %d staging folder(s) left by interrupted exports", len(removed))
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
    summary = {"data": "synthetic:color-shape", "created_by": "service start-up"}
    return export_classifier(learner, world_class_names(), root, name, training=summary)


def _stamp(path: Path) -> tuple[int, int]:
    try:
        info = (path / MANIFEST_FILE).stat()
    except OSError:
        raise UnknownVersionError(
            f"{path.parent.name} version {path.name} was just removed"
        ) from None
    return info.st_ino, info.st_mtime_ns
