"""The image as users run it: built from the Dockerfile, started by `docker compose up` (with
docker-compose.cpu.yml: no GPU here), used over the published port with the API key set,
restarted, inspected, removed. Run by `make test-image` (marked `docker`, so `make test`
leaves it out)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest

from tests.deploy.docker import (
    DOCKER,
    ROOT,
    compose_command,
    docker,
    health,
    logs,
    merged_compose,
    wait_healthy,
)
from tests.service.jobs.helpers import PARTS, shapes, submit, versions, wait_for
from tests.service.servers import free_port

pytestmark = pytest.mark.docker
log = logging.getLogger(__name__)

KEY = "image-secret"
SITE = "/opt/venv/lib/python3.11/site-packages"
# the driver's own library: the NVIDIA container toolkit mounts it from the host at start
DRIVER = {"libcuda.so.1"}
TENSORRT = {"libnvinfer.so.10", "libnvonnxparser.so.10"}  # not in the image (Dockerfile)


@dataclass(frozen=True)
class Stack:
    compose: list[str]  # the compose command with its project and file
    container: str
    url: str


@pytest.fixture(scope="module")
def stack(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """docker-compose.yml with docker-compose.cpu.yml, on the test image, up until healthy."""
    project = f"psimage{uuid.uuid4().hex[:6]}"
    merged = merged_compose(ROOT / "docker-compose.yml", ROOT / "docker-compose.cpu.yml")
    api = merged["services"]["api"]
    del api["build"]  # the image is the one built for this session
    api["image"] = image
    file = tmp_path_factory.mktemp("compose") / "docker-compose.yml"
    file.write_text(json.dumps(merged))  # JSON is YAML
    port = free_port()
    os.environ |= {"PROMPTSERVE_API_KEY": KEY, "PROMPTSERVE_PORT": str(port)}
    compose = [*compose_command(), "-p", project, "-f", str(file)]
    try:
        subprocess.run([*compose, "up", "-d"], check=True, capture_output=True, timeout=300)
        container = subprocess.run(
            [*compose, "ps", "-q", "api"], check=True, capture_output=True, text=True
        ).stdout.strip()
        log.warning("healthy %.0f s after compose up", wait_healthy(container))
        yield Stack(compose, container, f"http://127.0.0.1:{port}")
    finally:
        subprocess.run([*compose, "down", "-v", "--remove-orphans"], capture_output=True)
        for name in ("PROMPTSERVE_API_KEY", "PROMPTSERVE_PORT"):
            os.environ.pop(name, None)


def red_star() -> bytes:
    """The README's red star."""
    from promptserve.training.synthetic.world import render, sample_scene

    scene = sample_scene(
        np.random.default_rng(0), shape="star", colour="red", style="filled", background="plain"
    )
    buffer = io.BytesIO()
    render(scene).save(buffer, format="PNG")
    return buffer.getvalue()


def classify(client: httpx.Client, image: bytes, **fields: str) -> dict[str, Any]:
    response = client.post("/classify", files={"images": ("x.png", image)}, data=fields)
    assert response.status_code == 200, response.text
    return dict(response.json())


def top_label(client: httpx.Client, image: bytes) -> str:
    return str(classify(client, image)["predictions"][0][0]["label"])


def served_by_parts(client: httpx.Client, image: bytes) -> None:
    """Classified by the tuned classifier over its own labels (2 epochs on 4 shots: which one
    wins is not the point)."""
    body = classify(client, image, classifier="parts", top_k="99")
    assert (body["classifier"], body["version"]) == ("parts", "1")
    assert {p["label"] for p in body["predictions"][0]} == set(PARTS.values())


def test_compose_up_serves_adapts_and_keeps_its_state_across_a_restart(stack: Stack) -> None:
    star = red_star()
    train = shapes("train", 4)
    assert httpx.post(f"{stack.url}/classify", files={"images": star}).status_code == 401
    with httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120
    ) as client:
        assert top_label(client, star) == "red star"
        assert "text/html" in client.get("/").headers["content-type"]  # the playground page
        job = submit(client, train, name="parts", method="coop", epochs=2)
        done = wait_for(client, job["id"], {"succeeded", "failed", "cancelled"}, timeout=600)
        assert done["state"] == "succeeded", done
        served_by_parts(client, train[0][0])

        docker("restart", stack.container, timeout=120)
        wait_healthy(stack.container)
        assert versions(client, "parts") == ["1"]
        assert [j["id"] for j in client.get("/jobs").json()["data"]] == [job["id"]]
        assert client.get(f"/jobs/{job['id']}").json()["state"] == "succeeded"
        served_by_parts(client, train[0][0])
        assert top_label(client, star) == "red star"


def test_the_service_runs_as_the_non_root_user(stack: Stack) -> None:
    status = docker("exec", stack.container, "cat", "/proc/1/status")
    uids = re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE)
    assert uids is not None
    assert uids.group(1) == "1000"
    assert docker("exec", stack.container, "id", "-un").strip() == "promptserve"


def test_the_image_holds_no_build_tools_or_caches(image: str) -> None:
    leftovers = run_in(
        image,
        "for tool in gcc cc make git pip pip3; do command -v $tool; done;"
        f" ls -d /src /root/.cache /var/lib/apt/lists/*_Packages {SITE}/pip 2>/dev/null;"
        " find /opt/venv -name __pycache__ | head -3",
    )
    assert leftovers.split() == []
    size = int(docker("image", "inspect", "-f", "{{.Size}}", image))
    log.warning("image size: %.2f GB", size / 1e9)


def run_in(image: str, script: str) -> str:
    return docker("run", "--rm", "--entrypoint", "sh", image, "-c", script, timeout=300)


def unresolved(image: str, library: str) -> set[str]:
    """The libraries `library` links that the dynamic linker cannot find in the image."""
    out = run_in(image, f"ldd {library}")
    return set(re.findall(r"^\s*(\S+) => not found", out, re.MULTILINE))


def test_the_cuda_providers_and_torch_find_their_libraries(image: str) -> None:
    # the CUDA 13 libraries torch brings serve ONNX Runtime's CUDA provider too (Dockerfile)
    assert unresolved(image, f"{SITE}/onnxruntime/capi/libonnxruntime_providers_cuda.so") <= DRIVER
    for torch_lib in ("libtorch_cuda.so", "libc10_cuda.so"):
        assert unresolved(image, f"{SITE}/torch/lib/{torch_lib}") <= DRIVER, torch_lib
    tensorrt = f"{SITE}/onnxruntime/capi/libonnxruntime_providers_tensorrt.so"
    assert unresolved(image, tensorrt) <= DRIVER | TENSORRT


# a log line naming CUDA as missing (not the start-up line "serving ... on cuda")
NO_CUDA = re.compile(
    r"^(?=.*\bcuda\b)(?=.*\b(not available|unavailable|no|not found|missing|cannot|failed)\b)",
    re.IGNORECASE | re.MULTILINE,
)


def test_start_up_on_cuda_without_a_gpu_fails_and_names_the_device(image: str) -> None:
    container = docker("run", "-d", "-e", "PROMPTSERVE_DEVICE=cuda", image).strip()
    try:
        deadline = time.monotonic() + 300  # the first start exports the default first
        while health(container) == "starting" and time.monotonic() < deadline:
            if NO_CUDA.search(logs(container, tail=400)):
                break  # it has said why; whether it exits or stays unready is checked below
            time.sleep(3)
        output = logs(container, tail=400)
        assert NO_CUDA.search(output), output
        status = health(container)
        assert status != "healthy", output
        if status == "exited":
            assert docker("inspect", "-f", "{{.State.ExitCode}}", container).strip() != "0"
        else:  # still up: it must not call itself ready
            ready = ["exec", container, "curl", "-fsS", "http://127.0.0.1:8000/health/ready"]
            assert subprocess.run([DOCKER, *ready], capture_output=True).returncode != 0
    finally:
        docker("rm", "-f", "-v", container, check=False)  # with its anonymous volumes


def test_the_image_holds_the_pinned_onnx_runtime_and_the_package_data(image: str) -> None:
    pin = re.search(r'"onnxruntime-gpu==([^;"]+)', (ROOT / "pyproject.toml").read_text())
    assert pin is not None
    script = (
        "import importlib.resources as r, onnxruntime;"
        "print(onnxruntime.__version__);"
        "print(r.files('promptserve.models').joinpath('weights/mini.safetensors').is_file());"
        "print(r.files('promptserve.service').joinpath('static/playground.html').is_file())"
    )
    out = run_in(image, f'python -c "{script}"')
    assert out.split() == [pin.group(1), "True", "True"]
