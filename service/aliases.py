"""Version aliases of a classifier: ``<store>/<name>/aliases.json``, and classifier references.

A classifier is named ``name``, ``name@alias`` or ``name@<version>``; a plain ``name`` means
``name@latest``. The aliases a user set (``PUT /v1/classifiers/{name}/aliases/{alias}``) are
kept per classifier in one small JSON file next to its versions, ``{"aliases": {"prod": "2"}}``,
replaced atomically (written beside it, then renamed over it), so a reader sees the old file or
the new one. The alias ``latest`` is implicit: it follows the newest version that is not a
*candidate* (a version a gated tuning job published without giving it its alias, see
`service.jobs.gate`), unless it was set explicitly; then it stays pinned until it is set again
or deleted. With an object store the file is synchronised like the versions
(`service.objectstore.StoreMirror`).

This module imports no torch and no web framework: the job store's processes use it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

from promptserve.service.errors import InvalidRequestError

ALIASES_FILE = "aliases.json"
LATEST = "latest"
ALIAS_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
DIGITS = re.compile(r"[0-9]+")


def check_alias(alias: str) -> str:
    """`alias` if it is a valid alias name: [a-z0-9][a-z0-9._-]{0,63}, not all digits."""
    if not isinstance(alias, str) or not ALIAS_PATTERN.fullmatch(alias) or DIGITS.fullmatch(alias):
        raise InvalidRequestError(
            f"invalid alias {alias!r}: use 1-64 of a-z, 0-9, '.', '_' or '-', starting with a "
            "letter or digit, and not only digits (those are versions)",
            fields=[{"path": ["path", "alias"], "message": "invalid alias name"}],
        )
    return alias


def is_version(selector: str) -> bool:
    return bool(DIGITS.fullmatch(selector))


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``name[@selector]`` -> (name, selector or None)."""
    name, at, selector = ref.partition("@")
    if at and not selector:
        raise InvalidRequestError(
            f"classifier {ref!r}: name a version or an alias after '@' (name@3, name@prod)"
        )
    return name, (selector if at else None)


def combine(ref: str, version: str | None) -> tuple[str, str | None]:
    """(name, selector) of a request naming `ref` and, maybe, a separate `version` field: the
    field wins over a plain name; a ``name@x`` with a different `version` is a 422."""
    name, selector = parse_ref(ref)
    if version is None:
        return name, selector
    if selector is not None and selector != version:
        raise InvalidRequestError(
            f"classifier {ref!r} and version {version!r} disagree: name the version once",
            fields=[{"path": ["body", "version"], "message": "conflicts with name@..."}],
        )
    return name, version


def aliases_path(store: Path, name: str) -> Path:
    return Path(store) / name / ALIASES_FILE


def parse_aliases(data: bytes | str) -> dict[str, str]:
    try:
        value: Any = json.loads(data)
    except ValueError:
        return {}
    aliases = value.get("aliases") if isinstance(value, dict) else None
    if not isinstance(aliases, dict):
        return {}
    return {str(k): str(v) for k, v in aliases.items()}


def read_aliases(store: Path, name: str) -> dict[str, str]:
    """The aliases set explicitly for `name` ({} when none)."""
    try:
        return parse_aliases(aliases_path(store, name).read_bytes())
    except OSError:
        return {}


def dump_aliases(aliases: dict[str, str]) -> bytes:
    return (json.dumps({"aliases": dict(sorted(aliases.items()))}, indent=2) + "\n").encode()


def write_file_atomically(path: Path, data: bytes) -> None:
    """Write `data` beside `path`, then rename it over `path` (readers see old or new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex}"
    try:
        with staging.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        staging.chmod(0o644)
        os.replace(staging, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()


def write_aliases(store: Path, name: str, aliases: dict[str, str]) -> None:
    write_file_atomically(aliases_path(store, name), dump_aliases(aliases))


def is_candidate_manifest(manifest: dict[str, Any]) -> bool:
    """Whether a version was published as a candidate (a failed gate), from its manifest."""
    training = manifest.get("training")
    publish = training.get("publish") if isinstance(training, dict) else None
    return isinstance(publish, dict) and publish.get("published") == "candidate"
