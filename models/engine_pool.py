"""Engines shared between classifiers: one open graph per (backbone, graph), whoever asks.

Format-2 classifiers name a shared visual graph (`models.graphs.GraphRef`). Classifiers that
name the same graph get the same engine object, so they cost one copy of the backbone in
memory and their requests can run in one engine call. The pool holds its engines weakly: an
engine lives while a loaded classifier (or a request in flight) holds it, and is closed when
the last of them goes, so bounding loaded classifiers bounds engines too. The `keep` engines
used last are also held, so a graph whose classifiers were all evicted for a moment is not
opened again (seconds on a large backbone) by the next request.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from pathlib import Path

from promptserve.models.engines import EngineKind, OnnxOptions, VisualEngine, open_engine
from promptserve.models.graphs import GraphRef, graph_dir, input_names, verify_graph
from promptserve.models.input_engines import InputEngine, open_input_engine

log = logging.getLogger(__name__)


class EnginePool:
    """Open engines of one kind on one device, keyed by `GraphRef.key`."""

    def __init__(
        self,
        engine: EngineKind = "onnx",
        device: str = "cpu",
        threads: int | None = None,
        keep: int = 2,
        options: OnnxOptions | None = None,
    ) -> None:
        self.engine: EngineKind = engine
        self.options = options
        self.keep = keep
        self._recent: OrderedDict[tuple[str, str], VisualEngine | InputEngine] = OrderedDict()
        self.device = device
        self.threads = threads
        self._engines: weakref.WeakValueDictionary[tuple[str, str], VisualEngine | InputEngine] = (
            weakref.WeakValueDictionary()
        )
        self._lock = threading.Lock()  # guards the table
        # one open per graph at a time: a first TensorRT build takes minutes on a large
        # backbone and must not hold up requests for graphs that are open or quick to open
        self._open_locks: dict[tuple[str, str], threading.Lock] = {}
        self.opened = 0  # engines opened so far (a reopen after release counts again)

    def get(self, store: Path, ref: GraphRef) -> VisualEngine:
        """The engine of `ref`'s graph in `store`, opened (and its files verified) once."""
        return self._get(store, ref, shared_inputs=False)  # type: ignore[return-value]

    def get_input_engine(self, store: Path, ref: GraphRef) -> InputEngine:
        """The engine of a shared prompt graph (it takes classifier tensors as inputs)."""
        return self._get(store, ref, shared_inputs=True)  # type: ignore[return-value]

    def _get(
        self, store: Path, ref: GraphRef, *, shared_inputs: bool
    ) -> VisualEngine | InputEngine:
        hit = self._lookup(ref)
        if hit is not None:
            return hit
        with self._lock:
            opening = self._open_locks.setdefault(ref.key, threading.Lock())
        with opening:
            hit = self._lookup(ref)
            if hit is not None:
                return hit
            directory = graph_dir(store, ref)
            record = verify_graph(directory)
            engine: VisualEngine | InputEngine
            if shared_inputs:
                names = input_names(record)
                engine = open_input_engine(
                    directory, names, self.engine, self.device, self.threads, self.options
                )
            else:
                engine = open_engine(
                    directory, self.engine, self.device, self.threads, self.options
                )
            with self._lock:
                self._engines[ref.key] = engine
                self._remember(ref.key, engine)
                self.opened += 1
            log.info(
                "opened the %s graph of backbone %s (%s on %s)",
                ref.graph[:12],
                ref.backbone[:12],
                self.engine,
                self.device,
            )
            return engine

    def _lookup(self, ref: GraphRef) -> VisualEngine | InputEngine | None:
        with self._lock:
            engine = self._engines.get(ref.key)
            if engine is not None:
                self._remember(ref.key, engine)
            return engine

    def _remember(self, key: tuple[str, str], engine: VisualEngine | InputEngine) -> None:
        self._recent[key] = engine
        self._recent.move_to_end(key)
        while len(self._recent) > self.keep:
            self._recent.popitem(last=False)

    def keys(self) -> list[tuple[str, str]]:
        """The graphs open now."""
        with self._lock:
            return list(self._engines.keys())

    def __len__(self) -> int:
        return len(self.keys())
