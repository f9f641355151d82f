"""The cluster compose file says what a several-host deployment needs (read here; started for
real by tests/deploy/test_cluster.py under `make test-image`): Postgres and MinIO with health
checks and volumes, API replicas behind a proxy that run no jobs, GPU workers, and the settings
that point them all at one queue and one bucket."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from promptserve.service.jobs.runner import STOP_WAIT_S
from promptserve.service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())["services"])


def test_every_long_running_service_has_a_health_check(services: dict[str, Any]) -> None:
    for name in ("postgres", "minio", "api", "worker", "proxy"):
        check = services[name]["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert services[name]["restart"] == "unless-stopped", name


def test_a_stopped_worker_exits_before_docker_kills_it(services: dict[str, Any]) -> None:
    # it hands its jobs back, then gives their processes STOP_WAIT_S; Docker's default grace is
    # 10 s, after which the worker would be killed (exit 137) on its way out
    grace = re.fullmatch(r"(\d+)s", services["worker"]["stop_grace_period"])
    assert grace is not None
    assert int(grace[1]) >= 2 * STOP_WAIT_S


def test_state_lives_in_volumes(services: dict[str, Any]) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())
    assert services["postgres"]["volumes"] == ["pgdata:/var/lib/postgresql/data"]
    assert services["minio"]["volumes"] == ["objects:/data"]
    assert set(compose["volumes"]) == {"pgdata", "objects", "weights-cache"}
    # no folder shared by replicas and workers: uploads travel through the object store
    for name in ("api", "worker"):
        assert services[name]["volumes"] == ["weights-cache:/data/cache"], name


def test_replicas_and_workers_share_one_queue_and_one_bucket(services: dict[str, Any]) -> None:
    api, worker = services["api"]["environment"], services["worker"]["environment"]
    for key in ("PROMPTSERVE_DATABASE_URL", "PROMPTSERVE_STORE", "PROMPTSERVE_S3_ENDPOINT_URL"):
        assert api[key] == worker[key], key
    assert api["PROMPTSERVE_MAX_CONCURRENT_JOBS"] == "0"  # replicas serve, workers train
    assert services["worker"]["command"] == ["promptserve", "worker"]
    assert "postgres" in services["api"]["depends_on"]
    assert services["proxy"]["depends_on"]["api"]["condition"] == "service_healthy"


def test_the_settings_named_are_real_and_read_as_meant(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    environment = services["worker"]["environment"]
    known = {f"PROMPTSERVE_{name.upper()}" for name in Settings.model_fields}
    assert {k for k in environment if k.startswith("PROMPTSERVE_")} <= known
    for key, value in environment.items():
        monkeypatch.setenv(key, value.replace("${POSTGRES_PASSWORD:-promptserve}", "pw"))
    settings = Settings()
    assert settings.store_url == "s3://promptserve/store"
    assert settings.store == Path("/data/store")
    assert str(settings.job_database).startswith("postgresql://promptserve:pw@postgres")


def test_gpus_are_reserved_for_replicas_and_workers(services: dict[str, Any]) -> None:
    for name in ("api", "worker"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia"
        assert device["capabilities"] == ["gpu"]
    # a GPU chosen per service, not `count: 1` (which lands every replica on GPU 0)
    api, worker = (
        services[name]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        for name in ("api", "worker")
    )
    assert (api, worker) == (["${PROMPTSERVE_API_GPU:-0}"], ["${PROMPTSERVE_WORKER_GPU:-0}"])


def test_the_image_holds_the_cluster_drivers() -> None:
    # psycopg and s3fs: the same image serves one host and a cluster; and it can trace
    assert "pip install $PIP_OPTIONS '.[cluster,tracing]'" in (ROOT / "Dockerfile").read_text()
