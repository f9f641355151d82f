"""The classifiers in the catalog: list, describe (from the manifests), delete a version, and
set, delete and list aliases (`service.aliases`)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Response

from promptserve.models.methods import list_methods
from promptserve.service.aliases import parse_ref
from promptserve.service.api.auth import CLASSIFY, AdminKey, ClassifyKey, audit
from promptserve.service.api.deps import CatalogDep, RuntimeDep, SettingsDep
from promptserve.service.api.schemas.classifiers import (
    AliasCreate,
    AliasPublic,
    ClassifierListPublic,
    ClassifierPublic,
    ClassifierSummaryPublic,
    ClassifierVersionPublic,
)
from promptserve.service.api.schemas.common import error_responses
from promptserve.service.catalog import Catalog

router = APIRouter(  # deprecated: the unversioned paths
    prefix="/classifiers",
    tags=["classifiers"],
    responses=error_responses(401, 403),
    deprecated=True,
)
v1_router = APIRouter(
    prefix="/classifiers",
    tags=["classifiers"],
    responses=error_responses(401, 403),
)
READ = [Depends(CLASSIFY)]  # reading needs `classify`; changing needs `admin` (AdminKey)


@router.get("")
@v1_router.get("")
async def list_classifiers(
    catalog: CatalogDep, settings: SettingsDep, key: ClassifyKey
) -> ClassifierListPublic:
    """Every classifier with a published version (a key with a prefix: those it may use)."""
    listed = await asyncio.to_thread(_list, catalog, settings.default_classifier)
    if key is not None and key.prefix is not None:
        kept = [summary for summary in listed.classifiers if key.may_use(summary.name)]
        listed = listed.model_copy(update={"classifiers": kept})
    return listed


@router.get("/{name}", dependencies=READ, responses=error_responses(404, 422))
@v1_router.get("/{name}", dependencies=READ, responses=error_responses(404, 422))
async def get_classifier(name: str, runtime: RuntimeDep) -> ClassifierPublic:
    """All versions of `name`, newest last: method, backbone, classes, metrics, training, and
    its aliases. `name@alias` or `name@3` lists only that version."""
    default, loaded = runtime.settings.default_classifier, runtime.engine.loaded()
    return await asyncio.to_thread(_describe, runtime.catalog, name, default, loaded)


@router.get("/{name}/{version}", dependencies=READ, responses=error_responses(404, 422))
@v1_router.get("/{name}/versions/{version}", dependencies=READ, responses=error_responses(404, 422))
async def get_classifier_version(
    name: str, version: str, runtime: RuntimeDep
) -> ClassifierVersionPublic:
    """One version of `name`; `version` may be an alias."""
    loaded = runtime.engine.loaded()
    return await asyncio.to_thread(_version, runtime.catalog, name, version, loaded)


@router.delete("/{name}/{version}", status_code=204, responses=error_responses(404, 409, 422))
@v1_router.delete(
    "/{name}/versions/{version}", status_code=204, responses=error_responses(404, 409, 422)
)
async def delete_classifier_version(
    name: str, version: str, catalog: CatalogDep, settings: SettingsDep, key: AdminKey
) -> Response:
    """Remove one version. The last version of the default classifier, and a version an alias
    other than `latest` points at, cannot be deleted (409); a `latest` pinned to it follows
    the newest version again."""
    protected = settings.default_classifier
    await asyncio.to_thread(catalog.delete, name, version, protected=protected)
    audit(key, "delete", classifier=name, version=version)
    return Response(status_code=204)


@v1_router.put("/{name}/aliases/{alias}", responses=error_responses(404, 422))
async def set_alias(
    name: str,
    alias: str,
    catalog: CatalogDep,
    body: AliasCreate,
    key: AdminKey,
) -> AliasPublic:
    """Point `alias` at a version (`{"version": "2"}`; an alias is resolved now). Setting
    `latest` pins it until it is set again or deleted."""
    version = await asyncio.to_thread(catalog.aliases.set, name, alias, body.version)
    audit(key, "alias_set", classifier=name, alias=alias, version=version)
    return AliasPublic(alias=alias, version=version)


@v1_router.delete("/{name}/aliases/{alias}", status_code=204, responses=error_responses(404, 422))
async def delete_alias(name: str, alias: str, catalog: CatalogDep, key: AdminKey) -> Response:
    """Remove an alias that was set; a deleted `latest` follows the newest version again."""
    await asyncio.to_thread(catalog.aliases.delete, name, alias)
    audit(key, "alias_delete", classifier=name, alias=alias)
    return Response(status_code=204)


@v1_router.get("/{name}/aliases", dependencies=READ, responses=error_responses(404, 422))
async def list_aliases(name: str, catalog: CatalogDep) -> dict[str, str]:
    """Every alias of `name` with its version, `latest` included."""
    return await asyncio.to_thread(catalog.aliases.of, name)


def _list(catalog: Catalog, default: str) -> ClassifierListPublic:
    summaries = []
    for name in catalog.names():
        versions = catalog.versions(name)
        aliases = catalog.aliases.of(name, versions)
        summaries.append(
            ClassifierSummaryPublic(
                name=name,
                versions=versions,
                latest=aliases["latest"],
                default=name == default,
                aliases=aliases,
            )
        )
    return ClassifierListPublic(default=default, classifiers=summaries)


def _describe(
    catalog: Catalog, ref: str, default: str, loaded: list[tuple[str, str]]
) -> ClassifierPublic:
    name, selector = parse_ref(ref)
    versions = catalog.versions(name)
    aliases = catalog.aliases.of(name, versions)
    shown = versions if selector is None else [catalog.resolve(name, selector)]
    return ClassifierPublic(
        name=name,
        default=name == default,
        latest=aliases["latest"],
        versions=[_version(catalog, name, v, loaded, aliases) for v in shown],
        aliases=aliases,
    )


def _version(
    catalog: Catalog,
    name: str,
    version: str,
    loaded: list[tuple[str, str]],
    aliases: dict[str, str] | None = None,
) -> ClassifierVersionPublic:
    version = catalog.resolve(name, version)
    manifest = catalog.manifest(name, version)
    aliases = aliases if aliases is not None else catalog.aliases.of(name)
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
        aliases=sorted(alias for alias, v in aliases.items() if v == version),
        candidate=catalog.aliases.is_candidate(name, version),
    )


def _dict(manifest: dict[str, Any], key: str) -> dict[str, Any]:
    value = manifest.get(key)
    return dict(value) if isinstance(value, dict) else {}
