"""An artifact's integrity: every file its manifest lists, checked against its sha256.

The loaders (`models.classifier`, `models.labels`) and `models.standalone` call
`verify_artifact` before they read a version, so a file altered or removed after publishing
fails with its name instead of loading. The manifest is read by `models.artifact.read_manifest`,
and the files each format must list are defined there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from promptserve.models.artifact import (
    ARTIFACT_FILES,
    OWN_FILES,
    SELF_CONTAINED,
    graph_ref,
    read_manifest,
)
from promptserve.models.errors import ArtifactError
from promptserve.models.hashing import sha256_file


def verify_artifact(path: Path) -> dict[str, Any]:
    """Check every file the manifest lists against its sha256; returns the manifest.

    Raises:
        ArtifactError: naming the first file that is missing, unlisted, or altered.
    """
    path = Path(path)
    manifest = read_manifest(path)
    files: dict[str, str] = manifest.get("files") or {}
    graph_ref(manifest)  # a format-2 manifest must name its graph properly
    required_files = ARTIFACT_FILES if manifest["format_version"] == SELF_CONTAINED else OWN_FILES
    for required in required_files:
        if required not in files:
            raise ArtifactError(f"{path}: the manifest does not list {required}")
    for filename, expected in files.items():
        if Path(filename).name != filename:  # a tampered manifest must not point elsewhere
            raise ArtifactError(f"{path}: manifest lists a path, not a file name: {filename!r}")
        if not (path / filename).is_file():
            raise ArtifactError(f"{path}: {filename} is missing")
        if sha256_file(path / filename) != expected:
            raise ArtifactError(f"{path}: {filename} does not match its sha256 in the manifest")
    return manifest
