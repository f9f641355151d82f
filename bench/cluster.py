"""Cluster mode on this machine (not a test; prints a table): classify throughput through one
and through two API replicas, and how long a queued job waits for a worker.

It starts what the cluster tests start (tests/cluster/servers.py): a throwaway Postgres from the
Debian packages, moto's S3 server, `promptserve serve` replicas with PROMPTSERVE_DATABASE_URL and
PROMPTSERVE_STORE_URL set, and `promptserve worker` processes; then

  (a) classify throughput: `--clients` concurrent clients posting one PNG each to
      ``POST /classify`` for `--seconds`, all to replica A, then spread over A and B;
  (b) job pick-up latency: zero-shot jobs submitted one at a time to idle workers; the time from
      the job's creation to its claim (``started_at - created_at`` in the queue), and to its
      version being served by the other replica.

    python bench/cluster.py                     # ~3 minutes on 2 cores
    python bench/cluster.py --seconds 5 --jobs 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' fixtures, as modules
from promptserve.service.jobs.store import JobStore  # noqa: E402
from promptserve.service.objectstore import open_filesystem  # noqa: E402
from tests.cluster.servers import S3_ENV, fresh_database, running_postgres, running_s3  # noqa: E402
from tests.cluster.test_cluster_e2e import start_worker  # noqa: E402
from tests.service.jobs.helpers import AUTH, KEY, shapes, submit  # noqa: E402
from tests.service.servers import Server, start_server, stop_server  # noqa: E402


async def throughput(urls: list[str], image: bytes, clients: int, seconds: float) -> float:
    """Images per second classified by `clients` concurrent clients spread over `urls`."""
    done = 0
    deadline = time.monotonic() + seconds

    async def client(url: str) -> None:
        nonlocal done
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60) as http:
            while time.monotonic() < deadline:
                files = [("images", ("x.png", image, "image/png"))]
                response = await http.post("/classify", files=files)
                if response.status_code == 200:
                    done += 1

    start = time.monotonic()
    await asyncio.gather(*(client(urls[i % len(urls)]) for i in range(clients)))
    return done / (time.monotonic() - start)


def pickup(apis: list[Server], database: str, jobs: int) -> tuple[list[float], list[float]]:
    """Seconds from creation to claim, and to being served by the other replica, per job."""
    queue = JobStore(database)
    claims, served = [], []
    with (
        httpx.Client(base_url=apis[0].url, headers=AUTH, timeout=60) as a,
        httpx.Client(base_url=apis[1].url, headers=AUTH, timeout=60) as b,
    ):
        for i in range(jobs):
            job = submit(a, shapes("train", 1), name=f"pickup{i}", method="zeroshot")
            while (row := queue.get(job["id"])) is not None and row.started_at is None:
                time.sleep(0.02)
            assert row is not None
            assert row.started_at is not None
            claims.append(row.started_at - row.created_at)
            while b.get(f"/classifiers/pickup{i}").status_code != 200:
                time.sleep(0.05)
            served.append(time.time() - row.created_at)
    return claims, served


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="per throughput run")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=5, help="jobs timed for pick-up")
    args = parser.parse_args()
    os.environ.update(S3_ENV)
    root = Path(tempfile.mkdtemp(prefix="promptserve-bench-cluster-"))
    with running_postgres() as postgres, running_s3(root / "moto.log") as s3:
        database = fresh_database(postgres, f"bench{uuid.uuid4().hex[:8]}")
        bucket = f"bench{uuid.uuid4().hex[:8]}"
        open_filesystem("s3://x", s3.endpoint).mkdir(bucket)
        env = {
            **S3_ENV,
            "PROMPTSERVE_API_KEY": KEY,
            "PROMPTSERVE_DATABASE_URL": database,
            "PROMPTSERVE_STORE_URL": f"s3://{bucket}/store",
            "PROMPTSERVE_S3_ENDPOINT_URL": s3.endpoint,
            "PROMPTSERVE_STORE_POLL_S": "1",
            "PROMPTSERVE_JOBS_DIR": str(root / "jobs"),
            "PROMPTSERVE_JOB_THREADS": "1",
        }
        api_env = env | {"PROMPTSERVE_MAX_CONCURRENT_JOBS": "0"}
        apis = [
            start_server(root / f"api{i}", root / f"api{i}.log", 300, **api_env) for i in (0, 1)
        ]
        workers = [start_worker(root, i, env) for i in (0, 1)]
        try:
            image = shapes("test", 1)[0][0]
            one = asyncio.run(throughput([apis[0].url], image, args.clients, args.seconds))
            two = asyncio.run(throughput([a.url for a in apis], image, args.clients, args.seconds))
            time.sleep(10)  # let the workers finish importing before timing pick-ups
            claims, served = pickup(apis, database, args.jobs)
        finally:
            for api in apis:
                stop_server(api)
            for worker in workers:
                worker.terminate()
                worker.wait(timeout=30)
    print(f"{os.cpu_count()} CPU cores; {args.clients} clients, one PNG per request")
    print("| API replicas | classify images/s |")
    print("|---|---|")
    print(f"| 1 | {one:.1f} |")
    print(f"| 2 | {two:.1f} |")
    print()
    print(f"job pick-up over {args.jobs} zero-shot jobs (idle workers, 0.5 s poll):")
    print(
        f"  created -> claimed: median {statistics.median(claims):.2f} s, max {max(claims):.2f} s"
    )
    print(
        f"  created -> served by the other replica: median {statistics.median(served):.1f} s, "
        f"max {max(served):.1f} s"
    )


if __name__ == "__main__":
    main()
