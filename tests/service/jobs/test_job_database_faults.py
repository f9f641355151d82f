"""A job database that is damaged, emptied, locked or unreachable never stops classification:
the service starts and classifies, `/adapt` and `/jobs` answer 503 with a code and Retry-After,
readiness names the problem, a damaged file is moved aside loudly and an emptied one warned
about, and the uploads of jobs the database lost are kept (in process, real SQLite files,
a real closed Postgres port)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from promptserve.service import faults
from promptserve.service.jobs import opening
from promptserve.service.jobs.store import JobStore
from tests.service.helpers import ClientFactory, png_bytes
from tests.service.jobs.helpers import SPEC, assert_error, json_body, post_json
from tests.service.servers import free_port
from tests.waiting import eventually

pytestmark = pytest.mark.anyio


def database_with_a_job(store: Path) -> tuple[Path, str]:
    path = store / ".jobs" / "jobs.db"
    jobs = JobStore(path)
    job, _ = jobs.create(SPEC, fingerprint="kept")
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the job in the main file
    return path, job.id


async def classifies(client: httpx.AsyncClient) -> None:
    files = [("images", ("x.png", png_bytes(), "image/png"))]
    response = await client.post("/classify", files=files)
    assert response.status_code == 200, response.text


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else os.urandom(len(data)))


@pytest.mark.parametrize("how", ["truncated", "random bytes"])
async def test_a_damaged_database_is_moved_aside_loudly_and_replaced(
    client_factory: ClientFactory, store: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    path, job_id = database_with_a_job(store)
    damage(path, how)
    caplog.set_level(logging.WARNING)
    async with client_factory() as (client, _):
        await classifies(client)
        response = await client.get("/jobs")
        assert response.status_code == 200, response.text
        assert response.json()["data"] == []
        ready = await client.get("/health/ready")
        assert ready.json()["jobs"] == {"status": "available", "message": None}
    [moved] = path.parent.glob("jobs.db.corrupt-*[0-9Z]")
    lines = [r for r in caplog.records if r.levelno == logging.ERROR and str(moved) in r.message]
    assert len(lines) == 1, caplog.text
    if how == "truncated":  # what was readable stays there: nothing was silently dropped
        assert moved.stat().st_size > 0
    assert job_id not in {job.id for job in JobStore(path).in_state("queued")}


async def test_an_emptied_database_warns_and_keeps_the_uploads_of_jobs_it_lost(
    client_factory: ClientFactory, store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, job_id = database_with_a_job(store)
    uploads = path.parent / job_id / "images"
    uploads.mkdir(parents=True)
    (uploads / "000000.png").write_bytes(png_bytes())
    for leftover in path.parent.glob("jobs.db-*"):
        leftover.unlink()
    path.write_bytes(b"")  # emptied: by a full disk, a bad restore, a careless `> jobs.db`
    os.utime(path.parent / job_id, (1.0e9, 1.0e9))  # older than the new database
    caplog.set_level(logging.WARNING)
    async with client_factory() as (client, _):
        await classifies(client)
        assert (await client.get("/jobs")).json()["data"] == []
    assert (uploads / "000000.png").is_file()  # not taken for an orphan
    assert "is an empty file" in caplog.text
    assert any(job_id in r.message and "kept" in r.message for r in caplog.records)


async def test_a_locked_database_leaves_classification_up_and_jobs_answer_503(
    client_factory: ClientFactory,
    store: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(opening, "RETRY_OPEN_S", 0.2)
    path, job_id = database_with_a_job(store)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process's write lock, held
    caplog.set_level(logging.WARNING)
    try:
        async with client_factory(job_db_timeout_s=0.5) as (client, runtime):
            await classifies(client)
            for response in (
                await client.get("/jobs"),
                await client.get(f"/jobs/{job_id}"),
                await post_json(client, json_body()),
            ):
                assert_error(response, 503, "jobs_unavailable", "locked")
                assert response.headers["retry-after"] == "5"
            ready = await client.get("/health/ready")
            assert ready.status_code == 200  # a classify-only replica stays in rotation
            jobs = ready.json()["jobs"]
            assert jobs["status"] == "unavailable"
            assert "locked" in jobs["message"]
            holder.execute("ROLLBACK")

            deadline = time.monotonic() + 10
            while (await client.get(f"/jobs/{job_id}")).status_code != 200:  # retried at once
                assert time.monotonic() < deadline, "the job database never opened again"
                await asyncio.sleep(0.05)
            assert (await client.get("/health/ready")).json()["jobs"]["status"] == "available"
            assert runtime.runner is not None
            await eventually(lambda: runtime.runner is not None and runtime.runner._recovered)
    finally:
        holder.close()
    assert "Traceback" not in caplog.text
    assert "is available again" in caplog.text


async def test_an_unreachable_postgres_leaves_classification_up_and_jobs_answer_503(
    client_factory: ClientFactory,
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"  # nothing listens there
    pytest.importorskip("psycopg", reason="psycopg is absent: pip install -e '.[dev]'")
    async with client_factory(database_url=url, job_db_timeout_s=1) as (client, _):
        await classifies(client)
        response = await client.get("/jobs")
        assert_error(response, 503, "jobs_unavailable", "cannot be reached")
        assert response.headers["retry-after"] == "5"
        ready = await client.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json()["jobs"]["status"] == "unavailable"


# --- storage faults at run time: 503 / 507 with Retry-After, one log line, no traceback ---------


def error_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("error", "status", "code", "retry_after"),
    [
        (errno.ENOSPC, 507, "storage_full", "60"),
        (errno.EDQUOT, 507, "storage_full", "60"),
        (errno.EROFS, 503, "storage_unavailable", "5"),
        (errno.EIO, 503, "storage_unavailable", "5"),
    ],
)
async def test_a_failing_upload_write_answers_its_fault_in_one_log_line(
    client_factory: ClientFactory,
    store: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: int,
    status: int,
    code: str,
    retry_after: str,
) -> None:
    def refused(self: Path, data: bytes) -> int:
        raise OSError(error, os.strerror(error), str(self))

    async with client_factory(max_concurrent_jobs=0) as (client, runtime):
        monkeypatch.setattr(Path, "write_bytes", refused)  # the uploads' one write
        caplog.set_level(logging.INFO)
        response = await post_json(client, json_body())
        monkeypatch.undo()
        assert_error(response, status, code)
        assert response.headers["retry-after"] == retry_after
        assert "/" not in response.json()["error"]["message"]  # no server paths
        [line] = error_lines(caplog)
        assert line.exc_info is None
        assert "POST /adapt failed" in line.message
        assert runtime.jobs.count("queued") == 0
        assert not [p for p in (store / ".jobs").iterdir() if p.is_dir()]  # partial files gone
        await classifies(client)


async def test_a_write_lock_held_by_another_process_answers_503_in_one_log_line(
    client_factory: ClientFactory, store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with client_factory(max_concurrent_jobs=0, job_db_timeout_s=0.3) as (client, runtime):
        holder = sqlite3.connect(runtime.jobs.path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        caplog.set_level(logging.INFO)
        try:
            response = await post_json(client, json_body())
            listed = await client.get("/jobs")  # WAL: reads go on under a write lock
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert_error(response, 503, "jobs_unavailable", "locked")
        assert response.headers["retry-after"] == "5"
        assert listed.status_code == 200
        [line] = error_lines(caplog)
        assert line.exc_info is None
        assert (await post_json(client, json_body())).status_code == 202


def test_sqlite_and_os_errors_map_to_their_faults(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "full.db")
    db.execute("CREATE TABLE t (x BLOB)")
    db.execute("PRAGMA max_page_count = 2")  # a real SQLITE_FULL
    with pytest.raises(sqlite3.OperationalError) as full:
        db.execute("INSERT INTO t VALUES (?)", (b"x" * 100_000,))
    assert faults.classify(full.value) is faults.FULL
    db.close()
    (tmp_path / "bad.db").write_bytes(os.urandom(4096))
    with (
        closing(sqlite3.connect(tmp_path / "bad.db")) as broken,
        pytest.raises(sqlite3.DatabaseError) as bad,
    ):
        broken.execute("SELECT * FROM sqlite_master")
    assert faults.classify(bad.value) is faults.DAMAGED
    assert faults.classify(OSError(errno.EROFS, "ro")) is faults.READ_ONLY
    assert faults.classify(OSError(errno.ENOENT, "gone")) is None  # a bug: a 500 as before
    assert faults.classify(sqlite3.OperationalError("no such table: x")) is None
