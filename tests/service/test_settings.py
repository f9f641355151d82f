"""Settings from PROMPTSERVE_* variables, their checks, and `service.main:app`."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from promptserve.service.settings import Settings, get_settings


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROMPTSERVE_STORE", str(tmp_path))
    monkeypatch.setenv("PROMPTSERVE_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("PROMPTSERVE_ENGINE", "torchscript")
    monkeypatch.setenv("PROMPTSERVE_API_KEY", "s3cret-value")
    settings = Settings()
    assert settings.store == tmp_path
    assert settings.max_batch_size == 7
    assert settings.engine == "torchscript"
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == "s3cret-value"
    assert "s3cret-value" not in repr(settings)  # a secret is never printed


def test_defaults() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.default_classifier == "default"
    assert settings.engine == "onnx"
    assert settings.device == "auto"
    assert settings.api_key is None


def test_blank_api_key_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMPTSERVE_API_KEY", "")
    assert Settings().api_key is None


@pytest.mark.parametrize(
    "bad",
    [
        {"default_classifier": "../x"},
        {"engine": "tensorrt"},
        {"device": "tpu"},
        {"max_batch_size": 0},
        {"max_wait_ms": -1},
        {"queue_size": 4, "max_images_per_request": 8},
    ],
)
def test_invalid_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**bad)  # type: ignore[arg-type]


def test_main_builds_the_app_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_settings: None
) -> None:
    monkeypatch.setenv("PROMPTSERVE_STORE", str(tmp_path))
    sys.modules.pop("promptserve.service.main", None)
    try:
        main = importlib.import_module("promptserve.service.main")
        assert main.app.state.runtime.settings.store == tmp_path
    finally:
        sys.modules.pop("promptserve.service.main", None)
