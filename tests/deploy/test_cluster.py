"""docker-compose.cluster.yml up for real: Postgres, an S3 server, two API replicas behind nginx
and a worker, each in its own container (the images no registry serves here replaced by local
ones, tests/deploy/substitutes), asked through the balancer and each replica directly.

A job posted through the balancer runs once, on the worker, and both replicas serve its
version; a version deleted through one replica stops being served by the other; a worker
container stopped mid-job hands its job to a second worker. Run by `make test-image` (marked
`docker`), on the image test_image.py uses.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.deploy.cluster import (
    Project,
    build_substitutes,
    cluster_file,
    hostname,
    wait_until,
)
from tests.deploy.docker import docker, health, logs, make_base_image, wait_healthy
from tests.service.jobs.helpers import shapes, submit, wait_for
from tests.service.servers import free_port

pytestmark = pytest.mark.docker
log = logging.getLogger(__name__)

KEY = "cluster-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
ENDED = {"succeeded", "failed", "cancelled"}


@dataclass(frozen=True)
class Cluster:
    project: Project
    url: str  # the balancer


@pytest.fixture(scope="module")
def cluster(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The cluster file with the local override, up with two API replicas and one worker."""
    suffix = uuid.uuid4().hex[:8]
    start = time.monotonic()
    images = build_substitutes(make_base_image(), suffix)
    log.warning("substitute images built in %.0f s", time.monotonic() - start)
    port = free_port()
    project = Project(
        f"pscluster{suffix}",
        cluster_file(image, tmp_path_factory.mktemp("cluster")),
        images
        | {
            "PROMPTSERVE_API_KEY": KEY,
            "PROMPTSERVE_PORT": str(port),
            "PROMPTSERVE_API_REPLICAS": "2",
            "PROMPTSERVE_WORKER_REPLICAS": "1",
        },
    )
    try:
        start = time.monotonic()
        project.compose("up", "-d", timeout=900)  # returns once the replicas are healthy
        log.warning("cluster up in %.0f s", time.monotonic() - start)
        yield Cluster(project, f"http://127.0.0.1:{port}")
    finally:
        for service in ("api", "worker", "proxy"):
            for container in project.containers(service):
                log.info("%s %s:\n%s", service, container[:12], logs(container, tail=60))
        project.compose("down", "-v", "--remove-orphans", timeout=300)
        docker("rmi", *images.values(), check=False)


def http(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers=AUTH, timeout=120)


def replicas(cluster: Cluster) -> list[httpx.Client]:
    """One client per API replica, on the port it publishes on 127.0.0.1."""
    return [http(cluster.project.published(c)) for c in cluster.project.containers("api")]


def zeroshot(client: httpx.Client, name: str) -> dict[str, Any]:
    return submit(client, shapes("train", 1), name=name, method="zeroshot")


def starts(client: httpx.Client, job_id: str) -> list[str]:
    """The runner ids that started the job, in order (from its events)."""
    events = client.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    return [e["data"]["worker"] for e in events if e["message"] == "job started"]


def classified(client: httpx.Client, name: str, version: str) -> httpx.Response:
    image = shapes("test", 1)[0][0]
    fields = {"classifier": name, "version": version}
    return client.post("/classify", data=fields, files=[("images", ("x.png", image, "image/png"))])


def served(client: httpx.Client, name: str, version: str) -> bool:
    listing = client.get(f"/classifiers/{name}")
    return listing.status_code == 200 and version in [
        v["version"] for v in listing.json()["versions"]
    ]


def classify_requests(client: httpx.Client) -> float:
    """The replica's count of answered /classify requests (its Prometheus metrics)."""
    text = client.get("/metrics").text
    found = re.findall(
        r'^promptserve_http_requests_total\{[^}]*route="/classify"[^}]*\} (\S+)$', text, re.M
    )
    return sum(float(value) for value in found)


def test_two_replicas_behind_the_balancer_and_one_worker(cluster: Cluster) -> None:
    project = cluster.project
    apis, workers = project.containers("api"), project.containers("worker")
    assert (len(apis), len(workers)) == (2, 1)
    for container in apis:
        assert health(container) == "healthy", logs(container)
    assert health(workers[0]) in ("starting", "healthy"), logs(workers[0])
    wait_healthy(project.containers("proxy")[0], timeout=120)
    assert httpx.get(f"{cluster.url}/classifiers").status_code == 401  # the key holds
    direct = replicas(cluster)
    before = [classify_requests(client) for client in direct]
    with http(cluster.url) as balancer:
        for _ in range(12):
            assert classified(balancer, "default", "1").status_code == 200
    after = [classify_requests(client) for client in direct]
    assert sum(after) - sum(before) == 12
    assert all(b > a for a, b in zip(before, after, strict=True)), (before, after)


def test_a_job_through_the_balancer_runs_once_and_both_replicas_serve_it(
    cluster: Cluster,
) -> None:
    (worker,) = cluster.project.containers("worker")
    with http(cluster.url) as balancer:
        job = zeroshot(balancer, "viaproxy")
        done = wait_for(balancer, job["id"], ENDED, timeout=300)
        assert done["state"] == "succeeded", done
        (runner,) = starts(balancer, job["id"])
    assert runner.split(":")[0] == hostname(worker)
    version = done["result"]["version"]
    for client in replicas(cluster):
        wait_until(lambda c=client: served(c, "viaproxy", version), 30, "version served")
        answer = classified(client, "viaproxy", version)
        assert answer.status_code == 200, answer.text
        assert (answer.json()["classifier"], answer.json()["version"]) == ("viaproxy", version)


def test_a_version_deleted_through_one_replica_is_not_served_by_the_other(
    cluster: Cluster,
) -> None:
    a, b = replicas(cluster)
    first = wait_for(a, zeroshot(a, "doomed")["id"], ENDED, timeout=300)
    second = wait_for(b, zeroshot(b, "doomed")["id"], ENDED, timeout=300)
    assert (first["state"], second["state"]) == ("succeeded", "succeeded"), (first, second)
    gone, kept = first["result"]["version"], second["result"]["version"]
    assert gone != kept
    for client in (a, b):
        for version in (gone, kept):
            wait_until(lambda c=client, v=version: served(c, "doomed", v), 30, "version served")
    assert a.delete(f"/classifiers/doomed/{gone}").status_code == 204
    seconds = wait_until(
        lambda: b.get(f"/classifiers/doomed/{gone}").status_code == 404, 30, "still served"
    )
    log.warning("the other replica dropped the version %.1f s after the delete", seconds)
    assert classified(b, "doomed", gone).status_code == 404
    assert classified(b, "doomed", kept).status_code == 200
    assert classified(a, "doomed", gone).status_code == 404


def test_a_stopped_worker_container_hands_its_job_to_another(cluster: Cluster) -> None:
    project = cluster.project
    project.compose("up", "-d", "--no-recreate", "--scale", "api=2", "--scale", "worker=2")
    try:
        first, second = project.containers("worker")
        with http(cluster.url) as balancer:
            job = submit(balancer, shapes("train", 4), name="handed", method="coop", epochs=200)
            wait_until(
                lambda: balancer.get(f"/jobs/{job['id']}").json().get("progress") is not None,
                300,
                "the job never started training",
            )
            (runner,) = starts(balancer, job["id"])
            holder = {hostname(c): c for c in (first, second)}[runner.split(":")[0]]
            other = second if holder == first else first
            stopped_at = time.monotonic()
            docker("stop", holder, timeout=120)
            seconds = time.monotonic() - stopped_at
            log.warning("the worker stopped in %.1f s:\n%s", seconds, logs(holder, tail=4))
            # within the stop grace: it exited itself, not killed by Docker (137)
            assert docker("inspect", "-f", "{{.State.ExitCode}}", holder).strip() == "0", logs(
                holder
            )
            taken = wait_until(
                lambda: len(starts(balancer, job["id"])) == 2, 120, "not handed over"
            )
            log.warning("the job restarted on the other worker %.1f s after the stop", taken)
            assert time.monotonic() - stopped_at < 60
            assert starts(balancer, job["id"])[1].split(":")[0] == hostname(other)
            row = balancer.get(f"/jobs/{job['id']}").json()
            assert row["state"] == "running", row
            assert balancer.post(f"/jobs/{job['id']}/cancel").status_code == 200
            assert wait_for(balancer, job["id"], ENDED, timeout=120)["state"] == "cancelled"
    finally:  # back to one fresh worker, as the other tests expect, whatever their order
        project.compose("rm", "-fs", "worker")
        project.compose("up", "-d", "--no-recreate", "--scale", "api=2", "--scale", "worker=1")
