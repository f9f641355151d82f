"""A self-contained copy of a published classifier, for use outside the service.

`export_standalone` writes a format-1 artifact (its own ``visual.onnx`` and
``visual.torchscript.pt`` beside its tensors and manifest) from a version of either format:
a format-1 version is copied and verified; a format-2 version on a plain or own graph gets
that graph's files, which are exactly its visual graph (the parity figures recorded at
publication hold for them); one on a shared prompt graph (its tensors are inputs there) has
its graph exported again from its learner with the tensors baked in, and parity-checked.
The result loads with `models.classifier.load_classifier` anywhere, with no store around it.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from promptserve.models.artifact import (
    ARTIFACT_FILES,
    MANIFEST_FILE,
    OWN_FILES,
    SELF_CONTAINED,
    graph_ref,
)
from promptserve.models.errors import ArtifactError
from promptserve.models.export import eager_visual_graph, export_visual_graph
from promptserve.models.graphs import INPUTS_FILE, copy_graph_files, graph_dir
from promptserve.models.hashing import sha256_file
from promptserve.models.integrity import verify_artifact
from promptserve.models.labels import load_learner


def export_standalone(version: Path, out: Path, tolerance: float = 1e-4) -> Path:
    """Write the version directory `version` as a self-contained artifact at `out`.

    `out` must not exist (or be an empty directory); it is written under a temporary name
    beside it and renamed into place. Returns `out`.

    Raises:
        ArtifactError: `version` fails verification, its shared graph is missing or altered,
            or `out` exists and is not empty.
    """
    version, out = Path(version), Path(out)
    manifest = verify_artifact(version)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ArtifactError(f"{out} exists and is not an empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        ref = graph_ref(manifest)
        if ref is None:
            for name in ARTIFACT_FILES:
                shutil.copyfile(version / name, staging / name)
        else:
            for name in OWN_FILES:
                shutil.copyfile(version / name, staging / name)
            if INPUTS_FILE in manifest["files"]:
                manifest["parity"] = _bake_graph(version, staging, tolerance)
            else:
                copy_graph_files(graph_dir(version.parent.parent, ref), staging)
            manifest = {key: value for key, value in manifest.items() if key != "graph"}
            manifest["format_version"] = SELF_CONTAINED
            manifest["files"] = {name: sha256_file(staging / name) for name in ARTIFACT_FILES}
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        verify_artifact(staging)
        if out.is_dir():
            out.rmdir()  # empty, checked above
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _bake_graph(version: Path, out: Path, tolerance: float) -> dict[str, object]:
    learner = load_learner(version)
    with eager_visual_graph(learner) as graph:
        return dict(export_visual_graph(graph, out, learner.preprocess.size, tolerance))
