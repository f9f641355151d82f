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
This module holds the layout, the reference a manifest stores (`GraphRef`) and the check of a
stored graph's files (`verify_graph`); `models.graph_publishing` exports and publishes graphs.
Graphs are never removed with a classifier version: others may share them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptserve.models.engines import ONNX_FILE, TORCHSCRIPT_FILE
from promptserve.models.errors import ArtifactError
from promptserve.models.hashing import sha256_file

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
