"""The classifiers in the catalog: list, describe (from the manifests), delete a version."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Response

from promptserve.models.methods import list_methods
from promptserve.service.api.deps import CatalogDep, RuntimeDep, SettingsDep, require_api_key
from promptserve.service.api.schemas import (
    ClassifierListPublic,
    ClassifierPublic,
    ClassifierSummaryPublic,
    ClassifierVersionPublic,
    error_responses,
)
from promptserve.service.catalog import Catalog

router = APIRouter(
    prefix="/classifiers",
    tags=["classifiers"],
    dependencies=[Depends(require_api_key)],
    responses=error_responses(401),
)


@router.get("")
async def list_classifiers(catalog: CatalogDep, settings: SettingsDep) -> ClassifierListPublic:
    """Every classifier with a published version."""
    return await asyncio.to_thread(_list, catalog, settings.default_classifier)


@router.get("/{name}", responses=error_responses(404, 422))
async def get_classifier(name: str, runtime: RuntimeDep) -> ClassifierPublic:
    """All versions of `name`, newest last: method, backbone, classes, metrics, training."""
    default, loaded = runtime.settings.default_classifier, runtime.engine.loaded()
    return await asyncio.to_thread(_describe, runtime.catalog, name, default, loaded)


@router.get("/{name}/{version}", responses=error_responses(404, 422))
async def get_classifier_version(
    name: str, version: str, runtime: RuntimeDep
) -> ClassifierVersionPublic:
    """One version of `name`."""
    loaded = runtime.engine.loaded()
    return await asyncio.to_thread(_version, runtime.catalog, name, version, loaded)


@router.delete("/{name}/{version}", status_code=204, responses=error_responses(404, 409, 422))
async def delete_classifier_version(
    name: str, version: str, catalog: CatalogDep, settings: SettingsDep
) -> Response:
    """Remove one version. The last version of the default classifier cannot be deleted."""
    protected = settings.default_classifier
    await asyncio.to_thread(catalog.delete, name, version, protected=protected)
    return Response(status_code=204)


def _list(catalog: Catalog, default: str) -> ClassifierListPublic:
    summaries = []
    for name in catalog.names():
        versions = catalog.versions(name)
        summaries.append(
            ClassifierSummaryPublic(
                name=name, versions=versions, latest=versions[-1], default=name == default
            )
        )
    return ClassifierListPublic(default=default, classifiers=summaries)


def _describe(
    catalog: Catalog, name: str, default: str, loaded: list[tuple[str, str]]
) -> ClassifierPublic:
    versions = catalog.versions(name)
    return ClassifierPublic(
        name=name,
        default=name == default,
        latest=versions[-1],
        versions=[_version(catalog, name, v, loaded) for v in versions],
    )


def _version(
    catalog: Catalog, name: str, version: str, loaded: list[tuple[str, str]]
) -> ClassifierVersionPublic:
    manifest = catalog.manifest(name, version)
    version = catalog.resolve(name, version)
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
        loaded=(name, version) in loaded,
        open_vocabulary=manifest.get("method") in list_methods(),
    )


def _dict(manifest: dict[str, Any], key: str) -> dict[str, Any]:
    value = manifest.get(key)
    return dict(value) if isinstance(value, dict) else {}
