"""Shared visual graphs: what a store holds once per backbone, not once per classifier.

Format-2 artifacts keep only their own tensors; their visual graph lives here, addressed by the
backbone's weights hash and by the graph's identity::

    <store>/.backbones/<weights sha256>/
      backbone.json                  the backbone id (spec, architecture, tag, hash)
      graphs/plain/                  the unmodified vision tower (zeroshot, coop, pre, linear_probe)
        graph.json                   kind, sha256 of each file, opset, parity when exported
        visual.onnx  visual.torchscript.pt
      graphs/<sha256 of its structure>/  a method's shared prompt graph: the classifier's
                                     tensors are inputs (provp, pmpo; `SharedVisual`)
      graphs/<sha256 of visual.onnx>/  a method's own graph (visual prompts baked in: dcp, sep)

Names starting with '.' are never classifier names, so the directory cannot collide with one.
A graph is exported into a staging folder beside its final place, parity-checked, and renamed
into place; when a concurrent publisher won the rename, its copy is used and ours dropped.
Graphs are never removed with a classifier version: others may share them.
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
from promptserve.models.errors import ArtifactError
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
from promptserve.models.hashing import sha256_file
from promptserve.models.input_engines import BoundInputs, open_input_engine, repeat_inputs
from promptserve.models.methods import Learner
from promptserve.models.methods.base import SharedVisual
from promptserve.models.versions import owned_staging

log = logging.getLogger(__name__)

BACKBONES_DIR = ".backbones"
GRAPHS_DIR = "graphs"
GRAPH_MANIFEST = "graph.json"
BACKBONE_MANIFEST = "backbone.json"
PLAIN = "plain"  # the graph id of the unmodified vision tower
GRAPH_FILES = (ONNX_FILE, TORCHSCRIPT_FILE)
INPUTS_FILE = "inputs.safetensors"  # in a version on a shared prompt graph: what it feeds it


@dataclass(frozen=True)
class GraphRef:
    """Which shared graph a format-2 classifier runs on (its manifest's ``graph`` field)."""

    backbone: str  # the backbone's weights sha256
    graph: str  # PLAIN, or the sha256 of the graph's visual.onnx

    @property
    def key(self) -> tuple[str, str]:
        """Engines are shared per key: one per (backbone, graph)."""
        return (self.backbone, self.graph)

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, value: Any) -> GraphRef:
        if not isinstance(value, dict):
            raise ArtifactError(f"the manifest's graph field must be an object, got {value!r}")
        backbone, graph = value.get("backbone"), value.get("graph")
        # both become path components: only hex digests (and "plain" for the graph) pass
        if not (_is_hex(backbone) and (graph == PLAIN or _is_hex(graph))):
            raise ArtifactError(f"the manifest's graph field is not a graph reference: {value}")
        return cls(str(backbone), str(graph))


def _is_hex(text: object) -> bool:
    return (
        isinstance(text, str)
        and 0 < len(text) <= 128
        and all(c in "0123456789abcdef" for c in text)
    )


def graph_dir(store: Path, ref: GraphRef) -> Path:
    return Path(store) / BACKBONES_DIR / ref.backbone / GRAPHS_DIR / ref.graph


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


def verify_graph(directory: Path) -> dict[str, Any]:
    """Check a shared graph's files against its ``graph.json``; returns that record.

    Raises:
        ArtifactError: the folder, its record or a file is missing or altered.
    """
    try:
        record = json.loads((directory / GRAPH_MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(
            f"the shared visual graph {directory} is missing: the store lost its "
            f"{BACKBONES_DIR} folder or part of it"
        ) from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {directory / GRAPH_MANIFEST}: {exc}") from exc
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or set(files) != set(GRAPH_FILES):
        raise ArtifactError(f"{directory / GRAPH_MANIFEST} does not list the graph files")
    for name, expected in files.items():
        if not (directory / name).is_file():
            raise ArtifactError(f"{directory}: {name} is missing")
        if sha256_file(directory / name) != expected:
            raise ArtifactError(f"{directory}: {name} does not match its sha256")
    return dict(record)


def input_names(record: dict[str, Any]) -> list[str]:
    """A shared prompt graph's input names, in the graph's argument order, from its record."""
    inputs = record.get("inputs")
    if not isinstance(inputs, dict) or not inputs:
        raise ArtifactError("the shared graph's record lists no inputs")
    return list(inputs)


def copy_graph_files(directory: Path, out: Path) -> None:
    """Copy a verified shared graph's ONNX and TorchScript files into `out`."""
    verify_graph(directory)
    for name in GRAPH_FILES:
        shutil.copyfile(directory / name, out / name)
