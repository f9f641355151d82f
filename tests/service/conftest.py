"""Service fixtures: a store of tiny classifiers exported once per session, apps over copies of
it, and image bytes (good, broken, bombs).

The tiny backbone is random-init and 32 px; one export costs ~10-20 CPU seconds, so the session
exports one classifier and every other classifier or version is a copy of it with its manifest's
name and version rewritten (the manifest is not among the hashed files).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.service.helpers import (
    CLASS_NAMES,
    TINY_NAMES,
    ClientFactory,
    make_settings,
    publish_copy,
    serve,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from promptserve.models.artifact import publish_classifier
    from promptserve.models.backbone import load_backbone
    from promptserve.models.methods import create_method

    learner = create_method("zeroshot", load_backbone("tiny"))
    root = tmp_path_factory.mktemp("tiny-export")
    return publish_classifier(learner, CLASS_NAMES, root, "tiny", metrics={"top1": 42.0})


@pytest.fixture(scope="session")
def template_store(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("template-store")
    for name in TINY_NAMES:
        (store / name).mkdir()
        publish_copy(tiny_artifact, store, name, "1")
    return store


@pytest.fixture
def store(template_store: Path, tmp_path: Path) -> Path:
    """A private copy of the template store (tests may publish and delete)."""
    target = tmp_path / "store"
    shutil.copytree(template_store, target)
    return target


@pytest.fixture
def client_factory(store: Path) -> ClientFactory:
    """``async with client_factory(**settings_overrides) as (client, runtime): ...``"""

    def factory(**overrides: Any) -> Any:
        return serve(make_settings(store, **overrides))

    return factory


# --- images ---------------------------------------------------------------------------------
