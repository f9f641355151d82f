"""The classifier artifact: publish, list and read ``<store>/<name>/<version>/``.

An artifact is written into a hidden temporary directory beside its versions, checked (the
exported graphs must match eager PyTorch), hashed, and only then renamed into place, so a
reader never sees a half-written version. Layout, manifest fields and both formats:
docs/reference/artifact.md (tested against what `publish_classifier` below writes). The ONNX /
TorchScript half lives in `models.export` (writing and checking the graphs) and
`models.engines` (running them); `models.integrity` checks a version's files.

Two formats are read. Format 1 is self-contained: the version holds its visual graph as
``visual.onnx`` and ``visual.torchscript.pt``. Format 2 (written by default) holds only the
classifier's own tensors and names its visual graph, kept once per store under
``<store>/.backbones/`` (see `models.graphs`); `models.standalone` turns either into a
self-contained format-1 copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from promptserve.models.engines import ONNX_FILE, TORCHSCRIPT_FILE
from promptserve.models.errors import (
    ArtifactError,
    InvalidNameError,
    UnknownClassifierError,
    UnknownVersionError,
)
from promptserve.models.export import (
    CLASSES_FILE,
    LEARNER_FILE,
    ONNX_OPSET,
    write_files,
    write_tensors,
)
from promptserve.models.graph_publishing import publish_visual_graph
from promptserve.models.graphs import INPUTS_FILE, GraphRef
from promptserve.models.hashing import sha256_file
from promptserve.models.methods import Learner
from promptserve.models.versions import VERSION_PATTERN, owned_staging, version_counter

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # written by default; SUPPORTED_FORMATS are read
SELF_CONTAINED = 1  # the format that holds its own visual graph files
SUPPORTED_FORMATS = (SELF_CONTAINED, FORMAT_VERSION)
MANIFEST_FILE = "manifest.json"
ARTIFACT_FILES = (CLASSES_FILE, ONNX_FILE, TORCHSCRIPT_FILE, LEARNER_FILE)  # format 1, hashed
OWN_FILES = (CLASSES_FILE, LEARNER_FILE)  # format 2, hashed; the graph is shared
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # one safe path component
TEMP_PREFIX = ".tmp-"
FILE_MODE = 0o644  # published files: the owner writes, the service (any user) reads
DIR_MODE = 0o755
PUBLISH_ATTEMPTS = 100  # numbers tried when version folders keep appearing meanwhile


# --- names, versions, hashes ----------------------------------------------------------------


def check_name(name: str) -> str:
    """`name` if it is a safe classifier name (letters, digits, ``._-``; not a path)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidNameError(
            f"invalid classifier name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def list_versions(store: Path, name: str) -> list[str]:
    """Published versions of classifier `name`, oldest first (numeric order)."""
    directory = Path(store) / check_name(name)
    if not directory.is_dir():
        return []
    found = [
        p.name for p in directory.iterdir() if p.is_dir() and VERSION_PATTERN.fullmatch(p.name)
    ]
    return sorted(found, key=int)


def resolve_version(store: Path, name: str, version: str | None = None) -> Path:
    """The directory of `version` of classifier `name`, or of its newest version when None."""
    versions = list_versions(store, name)
    if not versions:
        raise UnknownClassifierError(f"no classifier named {name!r}: it has no published version")
    if version is None:
        version = versions[-1]
    version = str(version)
    if version not in versions:
        raise UnknownVersionError(
            f"classifier {name!r} has no version {version!r}; versions: {', '.join(versions)}"
        )
    return Path(store) / name / version


# --- reading --------------------------------------------------------------------------------


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the artifact directory `path` (or of the manifest file itself)."""
    path = Path(path)
    file = path if path.name == MANIFEST_FILE else path / MANIFEST_FILE
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path} is not a classifier artifact: no {MANIFEST_FILE}") from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {file}: {exc}") from exc
    found = manifest.get("format_version") if isinstance(manifest, dict) else None
    if found not in SUPPORTED_FORMATS:
        raise ArtifactError(
            f"{file}: unsupported artifact format {found!r} "
            f"(this version reads {', '.join(map(str, SUPPORTED_FORMATS))})"
        )
    assert isinstance(manifest, dict)
    return manifest


def graph_ref(manifest: dict[str, Any]) -> GraphRef | None:
    """The shared graph a format-2 manifest names; None for a self-contained artifact."""
    if manifest["format_version"] == SELF_CONTAINED:
        return None
    return GraphRef.from_json(manifest.get("graph"))


# --- publishing -----------------------------------------------------------------------------


def publish_classifier(
    learner: Learner,
    class_names: list[str],
    store: Path,
    name: str,
    *,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    tolerance: float = 1e-4,
    format_version: int = FORMAT_VERSION,
) -> Path:
    """Publish `learner` on `class_names` as the next version of classifier `name`.

    Args:
        learner: the tuned method (any device; the graphs are exported and checked on the CPU).
        class_names: the label set, in logit order.
        store: the classifier store root.
        name: classifier name (see `check_name`).
        training: JSON-serialisable training summary for the manifest.
        metrics: JSON-serialisable evaluation metrics for the manifest.
        tolerance: largest max-abs difference between exported and eager embeddings.
        format_version: 2 (its own tensors; the visual graph shared in the store) or 1
            (self-contained: the graph files inside the version).

    Returns:
        The published version directory ``<store>/<name>/<version>``.

    Raises:
        ArtifactError: bad name, class names or metadata; export failure.
        ExportParityError: an exported graph disagrees with eager; nothing is published.
    """
    check_name(name)
    if format_version not in SUPPORTED_FORMATS:
        raise ArtifactError(f"cannot write artifact format {format_version!r}")
    _check_class_names(class_names)
    extra = {"training": dict(training or {}), "metrics": dict(metrics or {})}
    try:
        json.dumps(extra)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(
            f"training summary and metrics must be JSON-serialisable: {exc}"
        ) from exc

    directory = Path(store) / name
    with owned_staging(directory, TEMP_PREFIX) as staging:  # start-up cleanup spares it
        try:
            if format_version == SELF_CONTAINED:
                parity = write_files(learner, class_names, staging, tolerance)
                own: dict[str, Any] = {"files": _hashes(staging, ARTIFACT_FILES)}
            else:
                write_tensors(learner, class_names, staging)
                published = publish_visual_graph(learner, Path(store), tolerance)
                parity = published.parity
                files: tuple[str, ...] = OWN_FILES
                if published.inputs is not None:
                    save_file(published.inputs, str(staging / INPUTS_FILE))
                    files = (*OWN_FILES, INPUTS_FILE)
                own = {"files": _hashes(staging, files), "graph": published.ref.to_json()}
            manifest = _manifest(learner, name, class_names, parity, format_version) | own | extra
            return _publish(staging, directory, manifest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(OSError):  # a name with no version must not be left listed
                directory.rmdir()
            raise


def _check_class_names(class_names: list[str]) -> None:
    if not class_names or not all(isinstance(n, str) and n.strip() for n in class_names):
        raise ArtifactError("a classifier needs at least one non-empty class name")
    if len(set(class_names)) != len(class_names):
        raise ArtifactError("class names must be unique")


def _hashes(directory: Path, files: tuple[str, ...]) -> dict[str, str]:
    return {f: sha256_file(directory / f) for f in files}


def _manifest(
    learner: Learner,
    name: str,
    class_names: list[str],
    parity: dict[str, Any],
    format_version: int,
) -> dict[str, Any]:
    import open_clip  # loaded already: the learner was built on it (models.backbone)

    return {
        "format_version": format_version,
        "name": name,
        "version": None,  # set by _publish once a number is won
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "method": learner.method_name,
        "config": dataclasses.asdict(learner.config),
        "backbone": dataclasses.asdict(learner.backbone_id),
        "preprocessing": dataclasses.asdict(learner.preprocess),
        "class_names": list(class_names),
        "logit_scale": float(learner.logit_scale),
        "onnx_opset": ONNX_OPSET,
        "parity": parity,
        "open_clip_version": open_clip.__version__,
        "torch_version": torch.__version__,
    }


def _publish(staging: Path, directory: Path, manifest: dict[str, Any]) -> Path:
    """Rename `staging` to a version number never handed out before (`models.versions`);
    take the next one if that number's folder appeared meanwhile (copied from another host)."""
    with version_counter(directory) as counter:
        for _ in range(PUBLISH_ATTEMPTS):
            version = counter.claim()
            manifest["version"] = str(version)
            (staging / MANIFEST_FILE).write_text(
                json.dumps(manifest, indent=2) + "\n", encoding="utf-8"
            )
            for file in staging.iterdir():
                file.chmod(FILE_MODE)  # one mode for every file, whatever wrote it
                _fsync(file)
            staging.chmod(DIR_MODE)
            target = directory / str(version)
            try:
                os.rename(staging, target)  # atomic; fails when the target exists, not empty
            except OSError:
                if not target.exists():
                    raise
                log.info("%s version %s appeared meanwhile", directory.name, version)
                continue
            _fsync(directory)  # makes the rename durable
            log.info("published classifier %s version %s at %s", manifest["name"], version, target)
            return target
    raise ArtifactError(f"could not claim a version for {directory} after {PUBLISH_ATTEMPTS} tries")


def _fsync(path: Path) -> None:
    """Flush a file, or a directory's entries (POSIX; Windows cannot open directories)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
