"""The Dockerfile and docker-compose.yml say what a GPU deployment needs: the files parsed and
their fields checked, with no Docker engine (tests/deploy builds and runs the image)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from promptserve.service.jobs.runner import STOP_WAIT_S
from promptserve.service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """Instructions (KEYWORD, arguments) per build stage, with continuations joined."""
    joined = re.sub(r"\\\n", " ", text)
    stages: list[list[tuple[str, str]]] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, rest.strip()))
    return stages


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
    return env


@pytest.fixture(scope="module")
def final_stage() -> list[tuple[str, str]]:
    return dockerfile_stages((ROOT / "Dockerfile").read_text())[-1]


@pytest.fixture(scope="module")
def api() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return compose["services"]["api"]


def test_image_is_cuda_python311_and_runs_the_service_as_a_non_root_user(
    final_stage: list[tuple[str, str]],
) -> None:
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"ARG BASE_IMAGE=(\S+)", text)
    assert base is not None
    assert base.group(1).startswith("nvidia/cuda:13.")  # the CUDA major of the wheels
    assert final_stage[0] == ("FROM", "${BASE_IMAGE}")
    assert "python3.11" in text
    users = [rest for keyword, rest in final_stage if keyword == "USER"]
    assert users
    assert users[-1] not in ("root", "0")
    assert ("EXPOSE", "8000") in final_stage
    cmd = [rest for keyword, rest in final_stage if keyword == "CMD"]
    assert cmd == ['["promptserve", "serve"]']


def test_image_listens_on_all_interfaces_and_checks_readiness(
    final_stage: list[tuple[str, str]],
) -> None:
    env = env_of(final_stage)
    assert env["PROMPTSERVE_HOST"] == "0.0.0.0"
    healthchecks = [rest for keyword, rest in final_stage if keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    assert "/health/ready" in healthchecks[0]
    assert f":{env['PROMPTSERVE_PORT']}/" in healthchecks[0]


def test_image_installs_the_gpu_onnx_runtime() -> None:
    # the image installs the project, whose Linux x86-64 dependency is onnxruntime-gpu
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"onnxruntime-gpu[^"]*platform_machine == .x86_64.', pyproject)
    assert re.search(
        r"pip install \$PIP_OPTIONS '?\.(\[[a-z,]+\])?'? ", (ROOT / "Dockerfile").read_text()
    )
    # pinned: the CUDA major of onnxruntime-gpu's build is the base image's and torch's
    assert re.search(r'"onnxruntime-gpu==1\.31\.\d+;', pyproject)


def test_image_environment_names_real_settings(final_stage: list[tuple[str, str]]) -> None:
    fields = {name.upper() for name in Settings.model_fields}
    for name in env_of(final_stage):
        if name.startswith("PROMPTSERVE_"):
            assert name.removeprefix("PROMPTSERVE_") in fields, name


def test_compose_reserves_an_nvidia_gpu(api: dict[str, Any]) -> None:
    devices = api["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


def test_compose_mounts_the_store_and_the_weight_cache(api: dict[str, Any]) -> None:
    env = api["environment"]
    targets = {volume.split(":")[1] for volume in api["volumes"]}
    assert env["PROMPTSERVE_STORE"] in targets
    assert any(env["HF_HOME"].startswith(target) for target in targets)


def test_compose_takes_the_api_key_from_the_host(api: dict[str, Any]) -> None:
    env = api["environment"]
    assert re.fullmatch(r"\$\{PROMPTSERVE_API_KEY(:-)?\}", env["PROMPTSERVE_API_KEY"])
    fields = {name.upper() for name in Settings.model_fields}
    for name in env:
        if name.startswith("PROMPTSERVE_"):
            assert name.removeprefix("PROMPTSERVE_") in fields, name


def test_compose_checks_readiness_and_publishes_the_port(api: dict[str, Any]) -> None:
    assert any("/health/ready" in part for part in api["healthcheck"]["test"])
    assert any(str(port).endswith(":8000") for port in api["ports"])
    assert api["build"] == "."


def test_compose_stops_after_the_job_processes_had_their_wait(api: dict[str, Any]) -> None:
    # Docker kills a container that has not exited after its grace (default 10 s): the service
    # first gives its job processes STOP_WAIT_S
    grace = re.fullmatch(r"(\d+)s", api["stop_grace_period"])
    assert grace is not None
    assert int(grace[1]) >= 2 * STOP_WAIT_S


def test_the_cpu_override_drops_the_gpu_and_runs_on_the_cpu() -> None:
    text = (ROOT / "docker-compose.cpu.yml").read_text()
    assert re.search(r"^    deploy: !reset \{\}$", text, re.MULTILINE)
    override = yaml.safe_load(text.replace("!reset", ""))
    assert override["services"]["api"]["environment"] == {"PROMPTSERVE_DEVICE": "cpu"}
