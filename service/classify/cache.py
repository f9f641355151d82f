"""Loaded classifiers and their engines: the engine's side of the store (see `service.catalog`).

Loaded versions are kept in a small LRU cache, keyed by name and version and checked against
the manifest's inode and mtime, so a version number that was deleted and published again is
reloaded, never served stale. Format-2 versions run on their store's shared graphs through one
`EnginePool`: classifiers on the same backbone graph share one engine, and loading one reads
only its own small tensors. `max_loaded` bounds loaded classifiers; engines live while a loaded
classifier uses them. Requests already holding a loaded version finish with it when it is
deleted. At a reduced `precision` each load runs the accuracy gate (`models.precision_gate`);
its outcomes are counted here for ``/metrics``.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass

from promptserve.models.classifier import Classifier, load_classifier
from promptserve.models.engine_pool import EnginePool
from promptserve.models.engines import EngineKind, OnnxOptions
from promptserve.models.precision import Precision
from promptserve.models.precision_gate import GateResult, GateThresholds
from promptserve.service.catalog import Catalog, Stamp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    """A cached classifier and the manifest stamp it was loaded from."""

    classifier: Classifier
    stamp: Stamp


class ClassifierCache:
    """The classifiers of `catalog` loaded for inference, `max_loaded` at most."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        engine_kind: EngineKind = "onnx",
        device: str = "cpu",
        onnx_threads: int | None = None,
        max_loaded: int = 8,
        onnx_options: OnnxOptions | None = None,
        precision: Precision = "fp32",
        gate: GateThresholds | None = None,
    ) -> None:
        self.catalog = catalog
        self.engine_kind: EngineKind = engine_kind
        self.device = device
        self.onnx_threads = onnx_threads
        self.onnx_options = onnx_options  # fp16, IO binding, TensorRT (models.engines)
        self.max_loaded = max_loaded
        self.precision: Precision = precision
        self.gate = gate or GateThresholds()
        self.gate_runs: Counter[tuple[str, str]] = Counter()  # (precision, outcome) -> runs
        self.engines = EnginePool(engine_kind, device, onnx_threads, options=onnx_options)
        self._cache: OrderedDict[tuple[str, str], Loaded] = OrderedDict()
        self._lock = threading.Lock()  # guards the cache
        self._load_lock = threading.Lock()  # serialises loads (rare, and memory-heavy)
        catalog.on_delete.append(self.forget)

    def get(self, name: str, version: str | None = None) -> Classifier:
        """The loaded classifier (newest version unless named); blocking: call off the loop."""
        version = self.catalog.resolve(name, version)
        key = (name, version)
        stamp = self.catalog.stamp(name, version)
        hit = self._cached(key, stamp)
        if hit is not None:
            return hit
        with self._load_lock:  # one load at a time; cache hits never wait for it
            hit = self._cached(key, stamp)
            if hit is not None:
                return hit
            classifier = self._load(name, version)
            with self._lock:
                self._cache[key] = Loaded(classifier, stamp)
                while len(self._cache) > self.max_loaded:
                    evicted, _ = self._cache.popitem(last=False)
                    log.info("unloaded classifier %s version %s (cache full)", *evicted)
        return classifier

    def get_loaded(self, name: str, version: str) -> Classifier | None:
        """The classifier when this version is already loaded and still current, else None
        (never loads). A stat, microseconds: cheap enough for the event loop, which saves a
        thread hop per request; `get` (in a thread) does the loading on a miss."""
        return self._cached((name, version), self.catalog.stamp(name, version))

    def _cached(self, key: tuple[str, str], stamp: Stamp) -> Classifier | None:
        with self._lock:
            hit = self._cache.get(key)
            if hit is None or hit.stamp != stamp:
                return None
            self._cache.move_to_end(key)
            return hit.classifier

    def forget(self, name: str, version: str) -> None:
        """Drop a deleted version (requests holding it finish with it)."""
        with self._lock:
            self._cache.pop((name, version), None)

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

    def precision_gates(self) -> list[tuple[str, str, GateResult]]:
        """(name, version, gate result) of each loaded classifier on a reduced precision."""
        with self._lock:
            return [
                (*key, entry.classifier.precision_gate)
                for key, entry in self._cache.items()
                if entry.classifier.precision_gate is not None
            ]

    def _load(self, name: str, version: str) -> Classifier:
        classifier = load_classifier(
            self.catalog.root / name / version,
            engine=self.engine_kind,
            device=self.device,
            threads=self.onnx_threads,
            options=self.onnx_options,
            engines=self.engines,
            precision=self.precision,
            gate=self.gate,
        )
        if classifier.precision_gate is not None:
            outcome = "passed" if classifier.precision_gate.passed else "fallback"
            with self._lock:
                self.gate_runs[(self.precision, outcome)] += 1
        log.info(
            "loaded classifier %s version %s (%d classes, %s %s on %s)",
            classifier.name,
            classifier.version,
            len(classifier.class_names),
            self.engine_kind,
            classifier.precision_gate.served if classifier.precision_gate else "fp32",
            self.device,
        )
        return classifier
