"""The classifiers in the store: list, describe (from the manifests), delete a version."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from promptserve.models.methods import list_methods
from promptserve.service.api.deps import SettingsDep, StoreDep, require_api_key
from promptserve.service.api.schemas import (
    ClassifierListPublic,
    ClassifierPublic,
    ClassifierSummaryPublic,
    ClassifierVersionPublic,
    error_responses,
)
from promptserve.service.store import ClassifierStore

router = APIRouter(
    prefix="/classifiers",
    tags=["classifiers"],
    dependencies=[Depends(require_api_key)],
    responses=error_responses(401),
)


@router.get("")
async def list_classifiers(store: StoreDep, settings: SettingsDep) -> ClassifierListPublic:
    """Every classifier with a published version."""
    return await asyncio.to_thread(_list, store, settings.default_classifier)


@router.get("/{name}", responses=error_responses(404, 422))
async def get_classifier(name: str, store: StoreDep, settings: SettingsDep) -> ClassifierPublic:
    """All versions of `name`, newest last: method, backbone, classes, metrics, training."""
    return await asyncio.to_thread(_describe, store, name, settings.default_classifier)


@router.get("/{name}/{version}", responses=error_responses(404, 422))
async def get_classifier_version(
    name: str, version: str, store: StoreDep
) -> ClassifierVersionPublic:
    """One version of `name`."""
    return await asyncio.to_thread(_version, store, name, version)


@router.delete("/{name}/{version}", status_code=204, responses=error_responses(404, 409, 422))
async def delete_classifier_version(
    name: str, version: str, store: StoreDep, settings: SettingsDep, request: Request
) -> Response:
    """Remove one version. The last version of the default classifier cannot be deleted."""
    sync = getattr(request.app.state.runtime, "sync", None)  # an object store, mirrored here
    delete = sync.mirror.delete_version if sync is not None else _delete_local
    await asyncio.to_thread(delete, store, name, version, protected=settings.default_classifier)
    return Response(status_code=204)


def _delete_local(
    store: ClassifierStore, name: str, version: str, *, protected: str | None
) -> None:
    store.delete(name, version, protected=protected)


def _list(store: ClassifierStore, default: str) -> ClassifierListPublic:
    summaries = []
    for name in store.names():
        versions = store.versions(name)
        summaries.append(
            ClassifierSummaryPublic(
                name=name, versions=versions, latest=versions[-1], default=name == default
            )
        )
    return ClassifierListPublic(default=default, classifiers=summaries)


def _describe(store: ClassifierStore, name: str, default: str) -> ClassifierPublic:
    versions = store.versions(name)
    return ClassifierPublic(
        name=name,
        default=name == default,
        latest=versions[-1],
        versions=[_version(store, name, v) for v in versions],
    )


def _version(store: ClassifierStore, name: str, version: str) -> ClassifierVersionPublic:
    manifest = store.manifest(name, version)
    version = store.resolve(name, version)
    class_names = [str(c) for c in manifest.get("class_names", [])]
    return ClassifierVersionPublic(
        version=version,
        created_at=manifest.get("created_at"),
        method=manifest.get("method"),
        config=_dict(manifest, "config"),
        backbone=_dict(manifest, "backbone"),
        class_names=class_names,
        num_classes=len(class_names),
        metrics=_dict(manifest, "metrics"),
        training=_dict(manifest, "training"),
        parity=_dict(manifest, "parity"),
        loaded=(name, version) in store.loaded(),
        open_vocabulary=manifest.get("method") in list_methods(),
    )


def _dict(manifest: dict[str, Any], key: str) -> dict[str, Any]:
    value = manifest.get(key)
    return dict(value) if isinstance(value, dict) else {}
