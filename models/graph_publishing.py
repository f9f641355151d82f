"""Publishing a classifier's visual graph into the store's shared graphs (`models.graphs`).

A learner whose visual side is the unmodified vision tower runs on its backbone's plain graph,
a learner with a `SharedVisual` on its method's shared prompt graph, and any other learner on a
graph of its own, kept once per content. A graph is exported into a staging folder beside its
final place, parity-checked, and renamed into place; when a concurrent publisher won the
rename, its copy is used and ours dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from promptserve.models.engines import (
    ONNX_FILE,
    TORCHSCRIPT_FILE,
    EngineKind,
    VisualEngine,
    open_engine,
)
from promptserve.models.export import (
    EXAMPLE_BATCH,
    ONNX_OPSET,
    check_parity,
    eager_visual_graph,
    export_onnx,
    export_torchscript,
    export_visual_graph,
    parity_pixels,
)
from promptserve.models.graphs import (
    BACKBONE_MANIFEST,
    BACKBONES_DIR,
    GRAPH_FILES,
    GRAPH_MANIFEST,
    GRAPHS_DIR,
    PLAIN,
    GraphRef,
    graph_dir,
    verify_graph,
)
from promptserve.models.hashing import sha256_file
from promptserve.models.input_engines import BoundInputs, open_input_engine, repeat_inputs
from promptserve.models.methods import Learner
from promptserve.models.methods.base import SharedVisual
from promptserve.models.versions import owned_staging

log = logging.getLogger(__name__)


def shares_plain_encoder(learner: Learner) -> bool:
    """True when `learner`'s visual side is the unmodified vision tower (it overrides neither
    `encode_images` nor `visual_graph`), so it can run on its backbone's shared plain graph.
    The parity check at publication confirms it numerically."""
    kind = type(learner)
    return kind.encode_images is Learner.encode_images and kind.visual_graph is Learner.visual_graph


@dataclass(frozen=True)
class PublishedGraph:
    ref: GraphRef
    parity: dict[str, Any]  # this classifier's eager path against the stored graph
    inputs: dict[str, Tensor] | None  # a shared prompt graph's inputs: the version stores them


def publish_visual_graph(learner: Learner, store: Path, tolerance: float) -> PublishedGraph:
    """Make sure the store holds `learner`'s visual graph; returns its reference, the parity
    figures of `learner` against it (ONNX and TorchScript vs eager, per classifier) and the
    tensors the classifier must feed it.

    A plain-encoder learner reuses its backbone's plain graph, a learner with a
    `SharedVisual` its method's shared prompt graph (both exported by the first classifier
    that needs them); any other learner exports its own graph, kept once per content.

    Raises:
        ExportParityError: a graph disagrees with eager beyond `tolerance`; nothing is kept.
    """
    backbone = learner.backbone_id.weights_sha256
    store = Path(store)
    _write_backbone_manifest(store, learner)
    size = learner.preprocess.size
    with eager_visual_graph(learner) as graph:
        shared = learner.shared_visual()
        if shared is None and not shares_plain_encoder(learner):
            figures = _publish_new(
                store, backbone, None, lambda d: export_visual_graph(graph, d, size, tolerance)
            )
            return PublishedGraph(GraphRef(backbone, figures.pop("graph")), figures, None)
        opener: Callable[[Path, EngineKind], VisualEngine]
        if shared is None:
            ref, inputs, opener = GraphRef(backbone, PLAIN), None, _plain_opener
        else:
            ref = GraphRef(backbone, shared_graph_id(learner.method_name, shared))
            inputs = {k: v.detach().float().cpu().contiguous() for k, v in shared.inputs.items()}
            opener = _bound(inputs)

        def fresh(directory: Path) -> dict[str, Any]:
            if shared is None:
                return export_visual_graph(graph, directory, size, tolerance)
            _export_shared(shared, directory, size)
            return check_parity(graph, directory, size, tolerance, opener)

        target = graph_dir(store, ref)
        if not target.is_dir():
            _publish_new(store, backbone, ref.graph, fresh, inputs)
        verify_graph(target)
        return PublishedGraph(ref, check_parity(graph, target, size, tolerance, opener), inputs)


def shared_graph_id(method: str, shared: SharedVisual) -> str:
    """A shared prompt graph's id: a hash of what fixes its structure, so every classifier of
    the method with the same prompt shapes finds the same graph."""
    identity = {
        "method": method,
        "inputs": {name: list(t.shape) for name, t in shared.inputs.items()},
        "structure": shared.structure,
        "onnx_opset": ONNX_OPSET,
        "torch_version": torch.__version__,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _export_shared(shared: SharedVisual, directory: Path, size: int) -> None:
    example = parity_pixels(EXAMPLE_BATCH, size)
    inputs = repeat_inputs(shared.inputs, EXAMPLE_BATCH)
    inputs = {k: v.detach().float().cpu().contiguous() for k, v in inputs.items()}
    graph = shared.graph.eval()
    export_onnx(graph, directory / ONNX_FILE, example, inputs)
    export_torchscript(graph, directory / TORCHSCRIPT_FILE, example, inputs)


def _plain_opener(directory: Path, kind: EngineKind) -> VisualEngine:
    return open_engine(directory, kind)


def _bound(inputs: dict[str, Tensor]) -> Callable[[Path, EngineKind], VisualEngine]:
    def opener(directory: Path, kind: EngineKind) -> VisualEngine:
        return BoundInputs(open_input_engine(directory, list(inputs), kind), inputs)

    return opener


def _publish_new(
    store: Path,
    backbone: str,
    graph_id: str | None,
    export: Callable[[Path], dict[str, Any]],
    inputs: dict[str, Tensor] | None = None,
) -> dict[str, Any]:
    """Export into staging with `export` (writes the files, returns checked parity figures)
    and rename into place (`graph_id` None: named by its ONNX hash, returned as the
    figures' "graph")."""
    graphs = Path(store) / BACKBONES_DIR / backbone / GRAPHS_DIR
    with owned_staging(graphs, ".tmp-") as staging:  # start-up cleanup spares it
        try:
            parity = export(staging)
            files = {name: sha256_file(staging / name) for name in GRAPH_FILES}
            name = graph_id or files[ONNX_FILE]
            manifest: dict[str, Any] = {
                "kind": "own" if graph_id is None else (PLAIN if graph_id == PLAIN else "shared"),
                "backbone": backbone,
                "files": files,
                "onnx_opset": ONNX_OPSET,
                "torch_version": torch.__version__,
                "parity": parity,
            }
            if inputs is not None:
                manifest["inputs"] = {k: list(v.shape) for k, v in inputs.items()}
            (staging / GRAPH_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            for file in staging.iterdir():
                file.chmod(0o644)
            staging.chmod(0o755)
            target = graphs / name
            try:
                os.rename(staging, target)
                log.info("published the %s visual graph of backbone %s", name[:12], backbone[:12])
            except OSError:
                if not target.is_dir():
                    raise
                log.info("graph %s of backbone %s appeared meanwhile", name[:12], backbone[:12])
                shutil.rmtree(staging, ignore_errors=True)
            return parity if graph_id is not None else {**parity, "graph": name}
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _write_backbone_manifest(store: Path, learner: Learner) -> None:
    directory = store / BACKBONES_DIR / learner.backbone_id.weights_sha256
    file = directory / BACKBONE_MANIFEST
    if file.is_file():
        return
    directory.mkdir(parents=True, exist_ok=True)
    staging = directory / f".tmp-{uuid.uuid4().hex}.json"
    record = {
        "backbone": dataclasses.asdict(learner.backbone_id),
        "preprocessing": dataclasses.asdict(learner.preprocess),
    }
    staging.write_text(json.dumps(record, indent=2) + "\n")
    staging.chmod(0o644)
    os.replace(staging, file)
