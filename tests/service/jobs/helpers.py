"""Job test helpers: labelled upload images, request bodies, submitting and waiting for jobs
over HTTP, a job spec for the store tests.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import httpx

from promptserve.service.jobs.process import JobLaunch
from promptserve.service.jobs.spec import JobSpec
from promptserve.service.jobs.store import Job, JobStore
from promptserve.training.api import TrainRequest
from tests.service.helpers import b64, png_bytes

KEY = "e2e-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
PARTS = {
    "red circle": "part 17",
    "blue square": "part 42",
    "green star": "part 88",
    "yellow heart": "part 95",
}
JOB_ENV = {
    "PROMPTSERVE_API_KEY": KEY,
    "PROMPTSERVE_JOB_THREADS": "1",
    "PROMPTSERVE_CANCEL_GRACE_S": "20",
    "PROMPTSERVE_ALLOW_ADAPT_DEFAULT": "true",  # a failing job must leave the default alone
}


def png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def shapes(split: str, per_class: int, seed: int = 3) -> list[tuple[bytes, str]]:
    """Colour-shape images of the four PARTS classes, labelled with their part numbers."""
    from promptserve.training.synthetic.tasks import SyntheticSpec, render_item

    spec = SyntheticSpec(task="color-shape", seed=seed)
    return [
        (png(render_item(spec, split, name, i)), part)
        for name, part in PARTS.items()
        for i in range(per_class)
    ]


def submit(client: httpx.Client, images: list[tuple[bytes, str]], **fields: Any) -> dict[str, Any]:
    files = [("images", (f"{i}.png", data, "image/png")) for i, (data, _) in enumerate(images)]
    data = {"labels": [label for _, label in images]} | {k: str(v) for k, v in fields.items()}
    response = client.post("/adapt", files=files, data=data)
    assert response.status_code == 202, response.text
    return dict(response.json())


def wait_for(
    client: httpx.Client, job_id: str, states: set[str], timeout: float = 300
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in states:
            return dict(job)
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} not in {states} after {timeout}s: {job}")


def wait_running_with_progress(client: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] == "running" and job["progress"]:
            return dict(job)
        assert job["state"] in ("queued", "running"), job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not start training")


def accuracy(client: httpx.Client, images: list[tuple[bytes, str]], **fields: Any) -> float:
    correct = 0
    for start in range(0, len(images), 4):
        chunk = images[start : start + 4]
        files = [("images", (f"{i}.png", data, "image/png")) for i, (data, _) in enumerate(chunk)]
        response = client.post("/classify", files=files, data=fields)
        assert response.status_code == 200, response.text
        for row, (_, label) in zip(response.json()["predictions"], chunk, strict=True):
            correct += row[0]["label"] == label
    return 100.0 * correct / len(images)


def versions(client: httpx.Client, name: str) -> list[str]:
    response = client.get(f"/classifiers/{name}")
    if response.status_code == 404:
        return []
    return [v["version"] for v in response.json()["versions"]]


RED, BLUE = (220, 30, 30), (30, 30, 220)


def json_body(**fields: Any) -> dict[str, Any]:
    images = [
        {"data": b64(png_bytes(RED)), "label": "red thing"},
        {"data": b64(png_bytes(BLUE)), "label": "blue thing"},
    ]
    return {"name": "mine", "images": images} | fields


def multipart(labels: list[str], images: list[bytes] | None = None) -> list[tuple[str, Any]]:
    images = images if images is not None else [png_bytes(RED), png_bytes(BLUE)]
    return [("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]


async def post_json(client: httpx.AsyncClient, body: Any, **headers: str) -> httpx.Response:
    return await client.post("/adapt", json=body, headers=headers)


def assert_error(response: httpx.Response, status: int, code: str, *words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    for word in words:
        assert word in error["message"], error["message"]


SPEC = JobSpec(
    train=TrainRequest(method="coop", data="/data/demo", store=Path("store"), name="demo"),
    data="demo",
    classes=["a", "b"],
    images=4,
)


def job_launch(jobs: JobStore, job: Job, tmp_path: Path, *, runner_pid: int) -> JobLaunch:
    """What a runner would tell the job process of `job` (claimed by a runner): one CPU thread,
    no niceness, the store under `tmp_path`."""
    assert job.runner is not None
    return JobLaunch(
        database=jobs.locator,
        job_id=job.id,
        store=tmp_path / "store",
        device="cpu",
        threads=1,
        niceness=0,
        runner_id=job.runner,
        runner_pid=runner_pid,
    )
