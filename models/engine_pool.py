"""Engines shared between classifiers: one open graph per (backbone, graph), whoever asks.

Format-2 classifiers name a shared visual graph (`models.graphs.GraphRef`). Classifiers that
name the same graph get the same engine object, so they cost one copy of the backbone in
memory and their requests can run in one engine call. The pool holds its engines weakly: an
engine lives while a loaded classifier (or a request in flight) holds it, and is closed when
the last of them goes, so bounding loaded classifiers bounds engines too. The `keep` engines
used last are also held, so a graph whose classifiers were all evicted for a moment is not
opened again (seconds on a large backbone) by the next request.

Engines are keyed by precision too (`models.precision`): with a reduced precision the pool
holds one int8 or bf16 engine per graph, shared by its classifiers, and opens the float32 one
beside it for the accuracy gate and for the classifiers that fail it.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from pathlib import Path

from promptserve.models.engines import EngineKind, OnnxOptions, VisualEngine
from promptserve.models.graphs import GraphRef, graph_dir, input_names, verify_graph
from promptserve.models.input_engines import InputEngine, open_input_engine
from promptserve.models.precision import Precision, precision_engine

Key = tuple[str, str, Precision]  # (backbone, graph, precision)

log = logging.getLogger(__name__)


class EnginePool:
    """Open engines of one kind on one device, keyed by `GraphRef.key` and precision."""

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
        self._recent: OrderedDict[Key, VisualEngine | InputEngine] = OrderedDict()
        self.device = device
        self.threads = threads
        self._engines: weakref.WeakValueDictionary[Key, VisualEngine | InputEngine] = (
            weakref.WeakValueDictionary()
        )
        self._lock = threading.Lock()  # guards the table
        # one open per graph at a time: a first TensorRT build takes minutes on a large
        # backbone and must not hold up requests for graphs that are open or quick to open
        self._open_locks: dict[Key, threading.Lock] = {}
        self.opened = 0  # engines opened so far (a reopen after release counts again)

    def get(self, store: Path, ref: GraphRef, precision: Precision = "fp32") -> VisualEngine:
        """The engine of `ref`'s graph in `store` at `precision`, opened (and its files
        verified) once."""
        return self._get(store, ref, precision, shared_inputs=False)  # type: ignore[return-value]

    def get_input_engine(
        self, store: Path, ref: GraphRef, precision: Precision = "fp32"
    ) -> InputEngine:
        """The engine of a shared prompt graph (it takes classifier tensors as inputs)."""
        return self._get(store, ref, precision, shared_inputs=True)  # type: ignore[return-value]

    def _get(
        self, store: Path, ref: GraphRef, precision: Precision, *, shared_inputs: bool
    ) -> VisualEngine | InputEngine:
        key: Key = (*ref.key, precision)
        hit = self._lookup(key)
        if hit is not None:
            return hit
        with self._lock:
            opening = self._open_locks.setdefault(key, threading.Lock())
        with opening:
            hit = self._lookup(key)
            if hit is not None:
                return hit
            directory = graph_dir(store, ref)
            record = verify_graph(directory)
            engine: VisualEngine | InputEngine
            if shared_inputs:
                names = input_names(record)
                engine = open_input_engine(
                    directory,
                    names,
                    self.engine,
                    self.device,
                    self.threads,
                    self.options,
                    precision,
                )
            else:
                engine = precision_engine(
                    directory, self.engine, precision, self.device, self.threads, self.options
                )
            with self._lock:
                self._engines[key] = engine
                self._remember(key, engine)
                self.opened += 1
            log.info(
                "opened the %s graph of backbone %s (%s %s on %s)",
                ref.graph[:12],
                ref.backbone[:12],
                self.engine if precision == "fp32" else "reduced",
                precision,
                self.device,
            )
            return engine

    def _lookup(self, key: Key) -> VisualEngine | InputEngine | None:
        with self._lock:
            engine = self._engines.get(key)
            if engine is not None:
                self._remember(key, engine)
            return engine

    def _remember(self, key: Key, engine: VisualEngine | InputEngine) -> None:
        self._recent[key] = engine
        self._recent.move_to_end(key)
        while len(self._recent) > self.keep:
            self._recent.popitem(last=False)

    def keys(self) -> list[Key]:
        """The graphs open now."""
        with self._lock:
            return list(self._engines.keys())

    def __len__(self) -> int:
        return len(self.keys())
