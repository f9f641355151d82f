"""The job store as a queue shared by runners, on SQLite and on a real Postgres: claims never
hand one job to two runners, leases expire into a retry or a failure, and a runner that lost a
job can no longer write to it."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

from promptserve.service.jobs.spec import dump_spec
from promptserve.service.jobs.store import JobStore, QueueFullError
from tests.cluster.servers import Postgres, fresh_database
from tests.service.jobs.helpers import SPEC


@pytest.fixture(params=["sqlite", "postgres"])
def jobs(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    if request.param == "sqlite":
        return JobStore(tmp_path / "jobs.db")
    server: Postgres = request.getfixturevalue("postgres")
    return JobStore(fresh_database(server, f"q{uuid.uuid4().hex[:12]}"))


def test_the_schema_opens_twice_and_a_job_round_trips(jobs: JobStore) -> None:
    again = JobStore(jobs.locator)
    job, created = jobs.create(SPEC, fingerprint="f", idempotency_key="k")
    assert created
    assert again.get(job.id) == job
    assert again.create(SPEC, fingerprint="f", idempotency_key="k") == (job, False)


def test_claims_take_the_oldest_job_once_with_a_lease(jobs: JobStore) -> None:
    first, _ = jobs.create(SPEC, fingerprint="a")
    second, _ = jobs.create(SPEC, fingerprint="b")
    claimed = jobs.claim_next("host:1:a", lease_s=30)
    assert claimed is not None
    assert claimed.id == first.id
    assert claimed.state == "running"
    assert claimed.runner == "host:1:a"
    assert claimed.attempts == 1
    assert claimed.lease_until is not None
    assert claimed.lease_until > time.time() + 25
    other = jobs.claim_next("host:2:b", lease_s=30)
    assert other is not None
    assert other.id == second.id
    assert jobs.claim_next("host:3:c", lease_s=30) is None


def test_concurrent_claims_never_share_a_job(jobs: JobStore) -> None:
    created = {jobs.create(SPEC, fingerprint=str(i))[0].id for i in range(20)}
    taken: list[str] = []
    lock = threading.Lock()

    def claim_all(worker: str) -> None:
        while (job := jobs.claim_next(worker, lease_s=30)) is not None:
            with lock:
                taken.append(job.id)

    threads = [threading.Thread(target=claim_all, args=(f"h:{i}:x",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken) == sorted(created)  # every job once, none twice


def test_concurrent_creates_with_one_key_make_one_job(jobs: JobStore) -> None:
    results: list[tuple[str, bool]] = []

    def create() -> None:
        job, created = jobs.create(SPEC, fingerprint="same", idempotency_key="one")
        results.append((job.id, created))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1


def test_heartbeats_keep_a_lease_and_expiry_retries_then_fails(jobs: JobStore) -> None:
    job, _ = jobs.create(SPEC, fingerprint="a")
    assert jobs.claim_next("h:1:a", lease_s=0.3) is not None
    assert jobs.heartbeat("h:1:a", [job.id], lease_s=30) == {job.id}
    time.sleep(0.5)
    assert jobs.expire_leases(max_attempts=2) == []  # renewed: not expired
    assert jobs.heartbeat("h:1:a", [job.id], lease_s=0.1) == {job.id}
    time.sleep(0.3)
    assert [j.id for j in jobs.expire_leases(max_attempts=2)] == [job.id]
    again = jobs.get(job.id)
    assert again is not None
    assert again.state == "queued"
    assert again.runner is None
    # the first runner lost it: it can neither renew nor end the job
    assert jobs.heartbeat("h:1:a", [job.id], lease_s=30) == set()
    assert not jobs.holds(job.id, "h:1:a")
    retried = jobs.claim_next("h:2:b", lease_s=0.1)
    assert retried is not None
    assert retried.attempts == 2
    assert not jobs.finish(job.id, "succeeded", result={}, runner="h:1:a")
    assert jobs.holds(job.id, "h:2:b")
    time.sleep(0.3)
    assert [j.id for j in jobs.expire_leases(max_attempts=2)] == [job.id]
    failed = jobs.get(job.id)
    assert failed is not None
    assert failed.state == "failed"
    assert failed.error is not None
    assert failed.error["reason"] == "worker_died"
    messages = [event.message for event in jobs.events(job.id)]
    assert sum("queued again" in message for message in messages) == 1
    assert messages[-1] == "worker lost"


def test_a_cancel_from_another_process_reaches_the_runner(jobs: JobStore) -> None:
    job, _ = jobs.create(SPEC, fingerprint="a")
    assert jobs.claim_next("h:1:a", lease_s=30) is not None
    api = JobStore(jobs.locator)  # another process's view of the same store
    flagged = api.request_cancel(job.id)
    assert flagged is not None
    assert flagged.state == "running"
    assert jobs.cancel_requested(job.id)
    assert jobs.finish(job.id, "cancelled", runner="h:1:a")
    assert api.get(job.id).state == "cancelled"  # type: ignore[union-attr]


def test_pruning_forgets_old_ended_jobs(jobs: JobStore) -> None:
    old, _ = jobs.create(SPEC, fingerprint="a")
    live, _ = jobs.create(SPEC, fingerprint="b")
    assert jobs.claim(old.id)
    assert jobs.finish(old.id, "succeeded", result={})
    assert jobs.prune(time.time() + 1) == [old.id]
    assert jobs.get(old.id) is None
    assert jobs.events(old.id) == []
    assert jobs.get(live.id) is not None


def test_counting_listing_and_events_read_the_same_on_both(jobs: JobStore) -> None:
    made = [jobs.create(SPEC, fingerprint=str(i))[0] for i in range(3)]
    assert jobs.count("queued") == 3
    assert jobs.claim_next("h:1:a", lease_s=30) is not None
    assert jobs.count("queued") == 2
    assert [job.id for job in jobs.in_state("running")] == [made[0].id]
    page, more = jobs.page(limit=2)
    assert [job.id for job in page] == [made[2].id, made[1].id]
    assert more
    rest, more = jobs.page(limit=2, after=made[1].id)
    assert [job.id for job in rest] == [made[0].id]
    assert not more
    jobs.add_event(made[0].id, "hello", data={"x": 1})
    events = jobs.events(made[0].id)
    assert [e.message for e in events] == ["job created", "job started", "hello"]
    assert events[-1].data == {"x": 1}
    assert jobs.events(made[0].id, after=events[0].seq)[0].message == "job started"


def test_a_stopping_runner_hands_its_jobs_back_at_once_without_counting_the_attempt(
    jobs: JobStore,
) -> None:
    job, _ = jobs.create(SPEC, fingerprint="a")
    other, _ = jobs.create(SPEC, fingerprint="b")
    assert jobs.claim_next("h:1:a", lease_s=30) is not None
    assert jobs.claim_next("h:2:b", lease_s=30) is not None
    # only its own running jobs: the other runner's stays where it is
    assert [j.id for j in jobs.hand_back("h:1:a", [job.id, other.id])] == [job.id]
    again = jobs.get(job.id)
    assert again is not None
    assert (again.state, again.runner, again.attempts) == ("queued", None, 0)
    assert not jobs.finish(job.id, "failed", error={"reason": "interrupted"}, runner="h:1:a")
    assert jobs.get(other.id).state == "running"  # type: ignore[union-attr]
    # a stop is no failure of the job: however often its runner stops, it is queued again
    for runner in ("h:3:c", "h:4:d", "h:5:e"):
        retried = jobs.claim_next(runner, lease_s=30)
        assert retried is not None
        assert (retried.id, retried.attempts) == (job.id, 1)
        assert [j.id for j in jobs.hand_back(runner, [job.id])] == [job.id]
    assert jobs.get(job.id).state == "queued"  # type: ignore[union-attr]


def test_a_job_whose_run_was_lost_is_retried_until_its_last_attempt(jobs: JobStore) -> None:
    job, _ = jobs.create(SPEC, fingerprint="a")
    assert jobs.claim_next("h:1:a", lease_s=30) is not None
    assert jobs.retry(job.id, "h:9:z", "died", max_attempts=2, reason="worker_died") is None
    assert jobs.retry(job.id, "h:1:a", "died", max_attempts=2, reason="worker_died")
    assert jobs.get(job.id).state == "queued"  # type: ignore[union-attr]
    assert jobs.claim_next("h:2:b", lease_s=30) is not None
    assert jobs.retry(job.id, "h:2:b", "stopped", max_attempts=2, reason="interrupted")
    failed = jobs.get(job.id)
    assert failed is not None
    assert (failed.state, failed.attempts) == ("failed", 2)
    assert failed.error == {"reason": "interrupted", "message": "stopped (attempt 2)"}


def test_a_job_keeps_its_owner_and_a_page_can_show_only_its_jobs(jobs: JobStore) -> None:
    mine, _ = jobs.create(SPEC, fingerprint="a", owner="acme")
    jobs.create(SPEC, fingerprint="b", owner="other")
    anonymous, _ = jobs.create(SPEC, fingerprint="c")
    newest, _ = jobs.create(SPEC, fingerprint="d", owner="acme")
    assert (mine.owner, anonymous.owner) == ("acme", None)
    again = JobStore(jobs.locator).get(mine.id)
    assert again is not None
    assert again.owner == "acme"
    page, more = jobs.page(limit=1, owner="acme")
    assert ([job.id for job in page], more) == ([newest.id], True)
    page, more = jobs.page(limit=5, owner="acme", after=newest.id)
    assert ([job.id for job in page], more) == ([mine.id], False)
    assert len(jobs.page(limit=10)[0]) == 4


OLD_JOBS_TABLE = """CREATE TABLE jobs (
    seq {serial} PRIMARY KEY, id TEXT NOT NULL UNIQUE, state TEXT NOT NULL, spec TEXT NOT NULL,
    idempotency_key TEXT UNIQUE, fingerprint TEXT NOT NULL, created_at {real} NOT NULL,
    started_at {real}, finished_at {real}, progress TEXT, result TEXT, error TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0, pid INTEGER, worker TEXT, lease_until {real},
    attempts INTEGER NOT NULL DEFAULT 0)"""
OLD_EVENTS_TABLE = """CREATE TABLE events (
    seq {serial} PRIMARY KEY, job_id TEXT NOT NULL, at {real} NOT NULL, level TEXT NOT NULL,
    message TEXT NOT NULL, data TEXT)"""


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_a_jobs_table_without_the_owner_column_gains_it(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    insert = (
        "INSERT INTO jobs (id, state, spec, fingerprint, created_at) "
        "VALUES ('job-old', 'queued', ?, 'f', 1.0)"
    )
    locator: str | Path
    if engine == "sqlite":  # the table as the previous release made it
        import sqlite3

        locator = tmp_path / "old.db"
        with sqlite3.connect(locator) as db:
            db.execute(OLD_JOBS_TABLE.format(serial="INTEGER", real="REAL"))
            db.execute(OLD_EVENTS_TABLE.format(serial="INTEGER", real="REAL"))
            db.execute(insert, (dump_spec(SPEC),))
    else:
        import psycopg

        server: Postgres = request.getfixturevalue("postgres")
        locator = fresh_database(server, f"old{uuid.uuid4().hex[:12]}")
        with psycopg.connect(locator, autocommit=True) as conn:
            conn.execute(OLD_JOBS_TABLE.format(serial="BIGSERIAL", real="DOUBLE PRECISION"))
            conn.execute(OLD_EVENTS_TABLE.format(serial="BIGSERIAL", real="DOUBLE PRECISION"))
            conn.execute(insert.replace("?", "%s"), (dump_spec(SPEC),))
    store = JobStore(locator)
    old = store.get("job-old")
    assert old is not None
    assert old.owner is None
    job, _ = store.create(SPEC, fingerprint="g", owner="acme")
    assert store.page(owner="acme")[0] == [job]


def test_the_queued_jobs_limit_holds_under_concurrent_submissions(jobs: JobStore) -> None:
    limit, already, senders = 16, 10, 24
    for n in range(already):
        jobs.create(SPEC, fingerprint=f"old-{n}", max_queued=limit)
    start = threading.Barrier(senders)
    outcomes: list[str] = []

    def send(n: int) -> None:
        own = JobStore(jobs.locator)  # another API process, say
        start.wait()
        try:
            own.create(SPEC, fingerprint=f"new-{n}", max_queued=limit)
        except QueueFullError:
            outcomes.append("refused")
        else:
            outcomes.append("queued")

    threads = [threading.Thread(target=send, args=(n,)) for n in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes).count("queued") == limit - already
    assert jobs.count("queued") == limit
    # a repeated key is answered with its job, full queue or not
    first, _ = jobs.create(SPEC, fingerprint="k", idempotency_key="k", max_queued=limit + 1)
    again, created = jobs.create(SPEC, fingerprint="k", idempotency_key="k", max_queued=limit)
    assert (again.id, created) == (first.id, False)
