"""Gated publishing: whether a tuning job's new version takes its alias.

A job publishes with ``publish="gated"`` (the /v1 default) or ``"always"``. Gated, the new
version takes the job's alias (``latest`` unless the request names another) only when its
held-out accuracy beats both the zero-shot classifier of its backbone and the version the alias
points at now, all three scored on the same held-out images of this job (the images of the
upload or dataset left out of the few-shot sample). Otherwise it is published as a *candidate*:
pinnable by ``name@<version>`` and promotable with ``PUT .../aliases/{alias}``, but no alias
moves to it and ``latest`` does not follow it, so a plain ``name`` keeps serving the version it
served before the job.

When the current version has other classes than the job (a classifier retrained on a new label
set), its accuracy on the job's images is not comparable: the gate then compares with zero-shot
only and says so in its reason. A job without held-out images (every image went into training)
cannot be gated: it is published as a candidate, with the reason.

The decision is made before the export and recorded in the manifest (``training.publish``), so
a candidate is one from the moment it is visible (`service.catalog`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from promptserve.service.aliases import LATEST

log = logging.getLogger(__name__)

GATED, ALWAYS = "gated", "always"


def make_gate(
    store: Path, name: str, publish: str, alias: str
) -> Callable[[Any, dict[str, Any]], dict[str, Any]]:
    """The `training.api.train_classifier` gate of a job publishing `name` into `store`."""

    def gate(fitted: Any, metrics: dict[str, Any]) -> dict[str, Any]:
        new = metrics.get("heldout_accuracy")
        zeroshot = metrics.get("heldout_zeroshot_accuracy")
        current_version, current, note = _current(store, name, alias, fitted)
        heldout = {"new": new, "zeroshot": zeroshot, "current": current}
        decision: dict[str, Any] = {
            "mode": publish,
            "alias": alias,
            "current_version": current_version,
            "heldout_images": metrics.get("heldout_images", 0),
        }
        if publish == ALWAYS:
            gate = {"passed": True, "reason": "publish=always: no gate", "heldout": heldout}
            return decision | {"published": "alias", "gate": gate}
        passed, reason = _decide(new, zeroshot, current, current_version, alias, note)
        gate = {"passed": passed, "reason": reason, "heldout": heldout}
        log.info("gate of %s: %s", name, reason)
        return decision | {"published": "alias" if passed else "candidate", "gate": gate}

    return gate


def _current(
    store: Path, name: str, alias: str, fitted: Any
) -> tuple[str | None, float | None, str]:
    """(version the alias points at, its held-out accuracy or None, a note on why None)."""
    from promptserve.models.errors import UnknownClassifierError, UnknownVersionError
    from promptserve.service.catalog import Catalog
    from promptserve.training.api import evaluate_classifier

    try:
        version = Catalog(store).resolve(name, alias)
    except UnknownClassifierError:
        return None, None, f"{name} has no version yet"
    except UnknownVersionError:
        return None, None, f"{name} has no alias {alias!r} yet"
    classes = Catalog(store).version_info(name, version).class_names
    if set(classes) != set(fitted.class_names):
        return (
            version,
            None,
            (
                f"{name}@{alias} (version {version}) has other classes than this job, so its "
                "accuracy on these images is not comparable"
            ),
        )
    if fitted.heldout is None:
        return version, None, "no held-out images"
    result = evaluate_classifier(store, name, fitted.heldout, version=version)
    return version, round(result.accuracy, 2), ""


def _decide(
    new: float | None,
    zeroshot: float | None,
    current: float | None,
    current_version: str | None,
    alias: str,
    note: str,
) -> tuple[bool, str]:
    if new is None or zeroshot is None:
        return False, (
            "no held-out images to score it on (every image went into training: send more "
            "images per class than `shots`), so it is published as a candidate"
        )
    if new <= zeroshot:
        return False, f"held-out accuracy {new} does not beat zero-shot {zeroshot}: candidate"
    if current is None:
        why = note or "no current version"
        return (
            True,
            f"held-out accuracy {new} beats zero-shot {zeroshot}; compared with zero-shot "
            f"only ({why})",
        )
    if new <= current:
        return False, (
            f"held-out accuracy {new} does not beat {alias} (version {current_version}) at "
            f"{current}: candidate"
        )
    return True, (
        f"held-out accuracy {new} beats zero-shot {zeroshot} and {alias} (version "
        f"{current_version}) at {current}"
    )


def apply_alias(store: Path, name: str, version: str, alias: str, mirror: Any = None) -> None:
    """Give a published version that passed its gate its alias. An unpinned `latest` follows
    the newest non-candidate version by itself, so it is left alone (pinning it would stop it
    following later versions); a pinned one, and any other alias, is set to `version`."""
    from promptserve.service.catalog import Catalog

    catalog = Catalog(store, mirror)
    if mirror is not None:
        mirror.pull_aliases(name)
    if alias == LATEST and LATEST not in catalog.aliases.explicit(name):
        return
    catalog.aliases.set(name, alias, version)
