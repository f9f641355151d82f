"""One publish per job with an object store, when the replica that serves also runs the jobs
(the default): a real `promptserve serve` on moto's S3, its jobs on SQLite or on Postgres.

The replica's store sync uploads versions it finds only in its local copy; a job's version is
there between the job's local publish and its own upload, and must not be uploaded a second
time (`service.publishing`). Separate worker hosts are tests/cluster/test_cluster_e2e.py's.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import httpx
import pytest

from promptserve.service.objectstore import StoreMirror
from tests.cluster.servers import S3_ENV, Postgres, S3Server, fresh_database
from tests.service.jobs.helpers import AUTH, KEY, shapes, submit, wait_for
from tests.service.servers import copy_store, start_server, stop_server
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

ENDED = {"succeeded", "failed", "cancelled"}
NAMES = ("first", "second", "third")


@pytest.mark.parametrize("queue", ["sqlite", "postgres"])
def test_a_replica_that_runs_jobs_publishes_each_once(
    queue: str,
    request: pytest.FixtureRequest,
    bucket_url: str,
    s3_server: S3Server,
    mini_template_store: Path,
    tmp_path: Path,
) -> None:
    env = {
        **S3_ENV,
        "PROMPTSERVE_API_KEY": KEY,
        "PROMPTSERVE_STORE_URL": bucket_url,
        "PROMPTSERVE_S3_ENDPOINT_URL": s3_server.endpoint,
        "PROMPTSERVE_STORE_POLL_S": "0.1",  # a pull in every gap a job leaves
        "PROMPTSERVE_JOB_THREADS": "1",
        "PROMPTSERVE_JOB_NICENESS": "0",
    }
    if queue == "postgres":
        server: Postgres = request.getfixturevalue("postgres")
        env["PROMPTSERVE_DATABASE_URL"] = fresh_database(server, f"p{uuid.uuid4().hex[:12]}")
    store = copy_store(mini_template_store, tmp_path / "store")
    api = start_server(store, tmp_path / "api.log", timeout=300, **env)
    other_host = StoreMirror(bucket_url, tmp_path / "other", endpoint_url=s3_server.endpoint)
    try:
        with httpx.Client(base_url=api.url, headers=AUTH, timeout=60) as http:
            ids = [
                submit(http, shapes("train", 1), name=name, method="zeroshot")["id"]
                for name in NAMES
            ]
            ended = [wait_for(http, job_id, ENDED, timeout=300) for job_id in ids]
            assert [job["state"] for job in ended] == ["succeeded"] * len(NAMES), ended
            # another host publishes a marker; once the replica serves it, every pull that
            # began while the jobs ran has ended
            marker = shutil.copytree(mini_template_store / "default" / "1", tmp_path / "marker")
            manifest = json.loads((marker / "manifest.json").read_text())
            (marker / "manifest.json").write_text(json.dumps(manifest | {"name": "marker"}))
            shutil.copytree(marker, other_host.local / "marker" / "1")
            other_host.push("marker", "1")
            wait_until(
                lambda: http.get("/classifiers/marker").status_code == 200,
                timeout=60,
                what="the replica serving another host's version",
            )
            listed = {
                name: [v["version"] for v in http.get(f"/classifiers/{name}").json()["versions"]]
                for name in NAMES
            }
    finally:
        stop_server(api)
    remote = other_host.remote_versions()
    for name, job in zip(NAMES, ended, strict=True):
        version = job["result"]["version"]
        assert {v for n, v in remote if n == name} == {version}, (name, sorted(remote))
        assert listed[name] == [version]
    log = api.log.read_text()
    assert "was taken on" not in log  # nothing renumbered: no second copy was uploaded
