"""The `monitoring` compose profile: Prometheus scraping the api and Grafana provisioned with
its data source and the promptserve dashboard, read statically (no image is pulled). With
`docker-compose` installed, its own `config` must accept the file with the profile on; the
YAML is parsed and checked either way."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ("prometheus", "grafana")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of a service's bind mounts (relative to the repository)."""
    found = {}
    for volume in service["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            found[target] = source
    return found


def test_monitoring_services_start_only_with_the_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "profiles" not in services["api"]  # a plain `up` still starts the service alone
    for name in MONITORING:
        assert services[name]["profiles"] == ["monitoring"], name
        assert services[name]["restart"] == "unless-stopped", name
    assert {"prometheus-data", "grafana-data"} <= set(compose["volumes"])


def test_prometheus_scrapes_the_api_metrics(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    host = mounts(prometheus)["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load((ROOT / host).read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["api:8000"]}]  # the api's port in the network
    assert prometheus["depends_on"] == ["api"]


def test_grafana_is_provisioned_with_the_datasource_and_the_dashboard(
    compose: dict[str, Any],
) -> None:
    grafana = compose["services"]["grafana"]
    paths = mounts(grafana)
    provisioning = ROOT / paths["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"  # the prometheus service's own port
    (provider,) = yaml.safe_load((provisioning / "dashboards/promptserve.yml").read_text())[
        "providers"
    ]
    folder = provider["options"]["path"]
    dashboard = {t: s for t, s in paths.items() if t.startswith(folder + "/")}
    assert list(dashboard.values()) == ["./deploy/grafana/promptserve.json"]
    assert json.loads((ROOT / "deploy/grafana/promptserve.json").read_text())["uid"]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="needs docker-compose")
def test_docker_compose_accepts_the_profile() -> None:
    command = ["docker-compose", "-f", "docker-compose.yml", "--profile", "monitoring", "config"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)["services"]
    assert set(resolved) == {"api", *MONITORING}
    for name in MONITORING:  # every file it mounts is in the repository
        for volume in resolved[name]["volumes"]:
            # compose v1 answers the short syntax, v2 the long one; host paths made absolute
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith("/"):
                assert Path(source).exists(), volume
