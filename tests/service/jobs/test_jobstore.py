"""The SQLite job store: states move only forward, once; idempotency; paging; events."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from pathlib import Path

import pytest

from promptserve.service.jobs.spec import dump_spec, load_spec
from promptserve.service.jobs.store import IdempotencyMismatchError, JobStore
from tests.service.jobs.helpers import SPEC


@pytest.fixture
def jobs(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.db")


def test_database_is_in_wal_mode(jobs: JobStore) -> None:
    with sqlite3.connect(jobs.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_job_goes_queued_running_succeeded_with_events(jobs: JobStore) -> None:
    job, created = jobs.create(SPEC, fingerprint="f")
    assert created
    assert job.state == "queued"
    assert job.spec == SPEC
    assert jobs.claim(job.id)
    assert not jobs.claim(job.id)  # only once
    jobs.set_progress(job.id, {"step": 3, "total_steps": 10})
    assert jobs.finish(job.id, "succeeded", result={"version": "1"})
    done = jobs.get(job.id)
    assert done is not None
    assert done.state == "succeeded"
    assert done.finished
    assert done.result == {"version": "1"}
    assert done.progress == {"step": 3, "total_steps": 10}
    assert done.started_at is not None
    assert done.finished_at is not None
    # a terminal job never moves again, whoever asks
    assert not jobs.finish(job.id, "failed", error={"reason": "error", "message": "late"})
    assert [e.message for e in jobs.events(job.id)] == [
        "job created",
        "job started",
        "job succeeded",
    ]


def test_cancelling_a_queued_job_ends_it_and_it_is_never_started(jobs: JobStore) -> None:
    job, _ = jobs.create(SPEC, fingerprint="f")
    cancelled = jobs.request_cancel(job.id)
    assert cancelled is not None
    assert cancelled.state == "cancelled"
    assert not jobs.claim(job.id)


def test_cancelling_a_running_job_only_flags_it(jobs: JobStore) -> None:
    job, _ = jobs.create(SPEC, fingerprint="f")
    jobs.claim(job.id)
    assert not jobs.cancel_requested(job.id)
    flagged = jobs.request_cancel(job.id)
    assert flagged is not None
    assert flagged.state == "running"
    assert flagged.cancel_requested
    assert jobs.cancel_requested(job.id)
    assert jobs.request_cancel("job-nope") is None


def test_idempotency_key_returns_the_first_job_or_refuses_another_request(
    jobs: JobStore,
) -> None:
    first, created = jobs.create(SPEC, fingerprint="f", idempotency_key="k1")
    again, created_again = jobs.create(SPEC, fingerprint="f", idempotency_key="k1")
    assert created
    assert not created_again
    assert again.id == first.id
    with pytest.raises(IdempotencyMismatchError) as info:
        jobs.create(SPEC, fingerprint="other", idempotency_key="k1")
    assert info.value.job.id == first.id
    assert len(jobs.page()[0]) == 1


def test_concurrent_creates_with_one_key_make_one_job(jobs: JobStore) -> None:
    ids: list[str] = []

    def create() -> None:
        job, _ = jobs.create(SPEC, fingerprint="f", idempotency_key="same")
        ids.append(job.id)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 8
    assert len(set(ids)) == 1


def test_list_is_newest_first_with_a_cursor(jobs: JobStore) -> None:
    created = [
        jobs.create(dataclasses.replace(SPEC, images=i), fingerprint=str(i))[0].id for i in range(5)
    ]
    page, more = jobs.page(limit=2)
    assert [j.id for j in page] == created[::-1][:2]
    assert more
    page2, more2 = jobs.page(limit=2, after=page[-1].id)
    assert [j.id for j in page2] == created[::-1][2:4]
    assert more2
    page3, more3 = jobs.page(limit=2, after=page2[-1].id)
    assert [j.id for j in page3] == created[:1]
    assert not more3
    with pytest.raises(KeyError):
        jobs.page(after="job-unknown")


def test_events_page_with_after(jobs: JobStore) -> None:
    job, _ = jobs.create(SPEC, fingerprint="f")
    for i in range(5):
        jobs.add_event(job.id, f"step {i}", data={"i": i})
    events = jobs.events(job.id)
    assert [e.message for e in events[1:]] == [f"step {i}" for i in range(5)]
    later = jobs.events(job.id, after=events[3].seq, limit=10)
    assert [e.data for e in later] == [{"i": 3}, {"i": 4}]


def test_another_connection_sees_writes_while_one_is_open(jobs: JobStore) -> None:
    # the service reads while a worker process writes: WAL readers are not blocked
    job, _ = jobs.create(SPEC, fingerprint="f")
    other = JobStore(jobs.path)
    with sqlite3.connect(jobs.path) as reader:
        reader.execute("BEGIN")
        reader.execute("SELECT * FROM jobs").fetchall()  # an open read transaction
        assert other.claim(job.id)  # a writer is not blocked by it
        reader.execute("COMMIT")
    fetched = jobs.get(job.id)
    assert fetched is not None
    assert fetched.state == "running"


def test_spec_round_trips_and_old_flat_rows_are_read() -> None:
    assert load_spec(dump_spec(SPEC)) == SPEC
    flat = (
        '{"name": "demo", "method": "coop", "backbone": "mini", "preset": "mini", "shots": 16,'
        ' "epochs": null, "seed": 1, "config": {}, "data": "upload", "classes": ["a", "b"],'
        ' "images": 4, "data_path": "/jobs/x/images/manifest.jsonl"}'
    )
    spec = load_spec(flat)
    assert spec.train.data == "/jobs/x/images/manifest.jsonl"
    assert (spec.data, spec.classes, spec.train.preset) == ("upload", ["a", "b"], "mini")
