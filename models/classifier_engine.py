"""Which engine a loaded classifier runs on: its own graph files or its store's shared graph,
at a precision (`models.precision`). `models.classifier` gates the reduced ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from promptserve.models.artifact import graph_ref
from promptserve.models.backbone import PreprocessConfig
from promptserve.models.engine_pool import EnginePool
from promptserve.models.engines import EngineKind, OnnxOptions, VisualEngine
from promptserve.models.graphs import INPUTS_FILE, graph_dir, input_names, verify_graph
from promptserve.models.input_engines import BoundInputs, open_input_engine
from promptserve.models.precision import Precision, precision_engine


def classifier_engine(
    path: Path,
    manifest: dict[str, Any],
    engine: EngineKind,
    device: str,
    threads: int | None,
    options: OnnxOptions | None,
    engines: EnginePool | None,
    precision: Precision,
) -> VisualEngine:
    """The engine of the artifact at `path` at `precision` (ungated: see `gated_engine`):
    its own graph files (format 1), or its store's shared graph, through `engines` when
    given (format 2)."""
    ref = graph_ref(manifest)
    if ref is None:  # self-contained: its own graph files
        return precision_engine(path, engine, precision, device, threads, options)
    store = path.parent.parent  # <store>/<name>/<version>
    if (path / INPUTS_FILE).is_file() and INPUTS_FILE in manifest["files"]:
        inputs = load_file(str(path / INPUTS_FILE))  # verified with the artifact's files
        if engines is not None:
            return BoundInputs(engines.get_input_engine(store, ref, precision), inputs)
        directory = graph_dir(store, ref)
        names = input_names(verify_graph(directory))
        shared = open_input_engine(directory, names, engine, device, threads, options, precision)
        return BoundInputs(shared, inputs)
    if engines is not None:
        return engines.get(store, ref, precision)
    directory = graph_dir(store, ref)
    verify_graph(directory)
    return precision_engine(directory, engine, precision, device, threads, options)


def preprocess_from_manifest(manifest: dict[str, Any]) -> PreprocessConfig:
    cfg = dict(manifest["preprocessing"])
    return PreprocessConfig(**{**cfg, "mean": tuple(cfg["mean"]), "std": tuple(cfg["std"])})
