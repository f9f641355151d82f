"""The cluster end to end with real processes: two API replicas and two `promptserve worker`
processes on one Postgres and one S3 bucket (moto), each replica and worker with its own local
store directory, as if on its own host.

A job submitted to replica A is run once, by a worker, and its version is served by replica B;
a worker whose host dies mid-job (its process group SIGKILLed) has its job taken over after the
lease runs out, never run twice at once; a version deleted through A stops being served by
both; 8 jobs submitted at once to both replicas each publish exactly once (the store-level race is
tests/cluster/test_queue.py's).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from promptserve.service.jobs.store import JobStore
from tests.cluster.servers import S3_ENV, Postgres, S3Server, fresh_database, start_worker
from tests.service.jobs.helpers import AUTH, KEY, shapes, submit, wait_for
from tests.service.servers import Server, copy_store, start_server, stop_server

pytestmark = pytest.mark.slow

LEASE_S = 10.0  # short for the takeover test, long enough for a loaded 2-core machine
ENDED = {"succeeded", "failed", "cancelled"}


@dataclass
class Cluster:
    apis: list[Server]
    workers: list[subprocess.Popen[bytes]]
    database: str
    env: dict[str, str]
    root: Path


@pytest.fixture(scope="module")
def cluster(
    postgres: Postgres,
    s3_server: S3Server,
    mini_template_store: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    database = fresh_database(postgres, f"c{uuid.uuid4().hex[:12]}")
    bucket = f"b{uuid.uuid4().hex[:12]}"
    from promptserve.service.object_calls import open_filesystem

    credentials = pytest.MonkeyPatch()  # s3fs in this process reads them; undone at teardown
    for name, value in S3_ENV.items():
        credentials.setenv(name, value)
    open_filesystem("s3://x", s3_server.endpoint).mkdir(bucket)
    env = {
        **S3_ENV,
        "PROMPTSERVE_API_KEY": KEY,
        "PROMPTSERVE_DATABASE_URL": database,
        "PROMPTSERVE_STORE_URL": f"s3://{bucket}/store",
        "PROMPTSERVE_S3_ENDPOINT_URL": s3_server.endpoint,
        "PROMPTSERVE_STORE_POLL_S": "0.5",
        # the same jobs path for every process, as on hosts run with one configuration; the
        # uploads still travel through the object store (the API removes its copy at once)
        "PROMPTSERVE_JOBS_DIR": str(root / "jobs"),
        "PROMPTSERVE_JOB_LEASE_S": str(LEASE_S),
        "PROMPTSERVE_JOB_MAX_ATTEMPTS": "2",
        "PROMPTSERVE_JOB_THREADS": "1",
        "PROMPTSERVE_JOB_NICENESS": "0",
        "PROMPTSERVE_MAX_QUEUED_JOBS": "100",
    }
    api_env = env | {"PROMPTSERVE_MAX_CONCURRENT_JOBS": "0"}  # replicas only serve
    workers = [start_worker(root, i, env) for i in range(2)]
    # each replica's local copy starts as a first start leaves it (its start-up default made,
    # not yet uploaded): both upload theirs at once and one is kept, as with two fresh replicas
    for i in range(2):
        copy_store(mini_template_store, root / f"api{i}-store")
    with ThreadPoolExecutor(2) as pool:
        apis = list(
            pool.map(
                lambda i: start_server(
                    root / f"api{i}-store", root / f"api{i}.log", timeout=300, **api_env
                ),
                range(2),
            )
        )
    try:
        yield Cluster(apis, workers, database, env, root)
    finally:
        credentials.undo()
        for api in apis:
            stop_server(api)
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
                worker.wait(timeout=30)


def client(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=AUTH, timeout=60)


def zeroshot(http: httpx.Client, name: str, **fields: Any) -> dict[str, Any]:
    return submit(http, shapes("train", 1), name=name, method="zeroshot", **fields)


def starts(jobs: JobStore, job_id: str) -> list[str]:
    """The workers that started the job, in order (from its events)."""
    return [
        (event.data or {}).get("worker", "")
        for event in jobs.events(job_id, limit=1000)
        if event.message == "job started"
    ]


def wait_served(http: httpx.Client, name: str, version: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listing = http.get(f"/classifiers/{name}")
        if listing.status_code == 200 and version in [
            v["version"] for v in listing.json()["versions"]
        ]:
            return
        time.sleep(0.2)
    raise AssertionError(f"{name} version {version} not served after {timeout}s")


def test_a_job_sent_to_one_replica_runs_once_and_the_other_serves_it(cluster: Cluster) -> None:
    jobs = JobStore(cluster.database)
    with client(cluster.apis[0]) as a, client(cluster.apis[1]) as b:
        job = zeroshot(a, "fromA")
        assert b.get(f"/jobs/{job['id']}").json()["id"] == job["id"]  # one queue
        done = wait_for(b, job["id"], ENDED, timeout=300)
        assert done["state"] == "succeeded", done
        assert len(starts(jobs, job["id"])) == 1
        version = done["result"]["version"]
        wait_served(b, "fromA", version)
        image = shapes("test", 1)[0][0]
        answer = b.post(
            "/classify",
            data={"classifier": "fromA", "version": version},
            files=[("images", ("x.png", image, "image/png"))],
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["classifier"] == "fromA"


def test_a_deleted_version_stops_being_served_by_both_replicas(cluster: Cluster) -> None:
    with client(cluster.apis[0]) as a, client(cluster.apis[1]) as b:
        first = wait_for(a, zeroshot(a, "doomed")["id"], ENDED, timeout=300)
        second = wait_for(a, zeroshot(a, "doomed")["id"], ENDED, timeout=300)
        assert (first["state"], second["state"]) == ("succeeded", "succeeded")
        gone, kept = first["result"]["version"], second["result"]["version"]
        assert gone != kept
        for http in (a, b):
            wait_served(http, "doomed", kept)
            wait_served(http, "doomed", gone)
        assert a.delete(f"/classifiers/doomed/{gone}").status_code == 204
        deadline = time.monotonic() + 15
        for http in (a, b):
            while http.get(f"/classifiers/doomed/{gone}").status_code != 404:
                assert time.monotonic() < deadline, "the deleted version is still served"
                time.sleep(0.2)
            image = shapes("test", 1)[0][0]
            answer = http.post(
                "/classify",
                data={"classifier": "doomed", "version": gone},
                files=[("images", ("x.png", image, "image/png"))],
            )
            assert answer.status_code == 404
            assert http.get(f"/classifiers/doomed/{kept}").status_code == 200


JOBS = 5  # more than the 2 x 2 job slots: both workers must take some


def test_concurrent_jobs_to_both_replicas_each_publish_exactly_once(cluster: Cluster) -> None:
    jobs = JobStore(cluster.database)
    with client(cluster.apis[0]) as a, client(cluster.apis[1]) as b:

        def send(i: int) -> dict[str, Any]:
            return zeroshot((a, b)[i % 2], f"many{i}")

        with ThreadPoolExecutor(10) as pool:
            submitted = list(pool.map(send, range(JOBS)))
        ids = [job["id"] for job in submitted]
        assert len(set(ids)) == JOBS
        ended = [wait_for(a, job_id, ENDED, timeout=400) for job_id in ids]
    assert [job["state"] for job in ended] == ["succeeded"] * JOBS, [
        (job["id"], job["state"], job.get("error")) for job in ended if job["state"] != "succeeded"
    ]
    for job_id in ids:
        began = starts(jobs, job_id)
        if len(began) > 1:  # its runner starved past the lease: taken over once, and recorded
            messages = [event.message for event in jobs.events(job_id, limit=1000)]
            assert len(began) == 2, (job_id, began)
            assert any("stopped renewing its lease" in m for m in messages), (job_id, messages)
    workers = {starts(jobs, job_id)[0].split(":")[1] for job_id in ids}
    assert workers == {str(worker.pid) for worker in cluster.workers}  # both took jobs
    assert {job["result"]["version"] for job in ended} == {"1"}


def test_a_dead_workers_job_is_taken_over_after_its_lease_never_twice(cluster: Cluster) -> None:
    jobs = JobStore(cluster.database)
    with client(cluster.apis[0]) as a:
        job = submit(a, shapes("train", 8), name="orphan", method="coop", epochs=200)
        deadline = time.monotonic() + 120
        while (row := jobs.get(job["id"])) is not None and not (row.progress and row.runner):
            assert time.monotonic() < deadline, "the job never started training"
            time.sleep(0.2)
        assert row is not None
        holder = next(w for w in cluster.workers if str(w.pid) == row.runner.split(":")[1])
        os.killpg(holder.pid, signal.SIGKILL)  # the worker's host dies: no one ends the job
        holder.wait()
        try:
            killed_at = time.monotonic()
            while (row := jobs.get(job["id"])) is not None and row.attempts < 2:
                assert time.monotonic() - killed_at < LEASE_S + 30, "the job was never retried"
                time.sleep(0.2)
            assert time.monotonic() - killed_at >= LEASE_S - 1  # not before the lease ran out
            survivor = next(w for w in cluster.workers if w is not holder)
            deadline = time.monotonic() + 60
            while (row := jobs.get(job["id"])) is not None and row.state != "running":
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert row is not None
            assert row.runner is not None
            assert row.runner.split(":")[1] == str(survivor.pid)
            messages = [event.message for event in jobs.events(job["id"], limit=1000)]
            assert sum("stopped renewing its lease" in m for m in messages) == 1
            assert len(starts(jobs, job["id"])) == 2
            cancelled = a.post(f"/jobs/{job['id']}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            assert wait_for(a, job["id"], ENDED, timeout=60)["state"] == "cancelled"
        finally:  # a new host in its place: the cluster has two workers for the next test
            index = cluster.workers.index(holder)
            cluster.workers[index] = start_worker(
                cluster.root, len(cluster.workers) + index, cluster.env
            )
