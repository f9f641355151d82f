"""Job metrics read from the job store when scraped, so they count every job of the store,
whichever process or host ran it (the job processes and ``promptserve worker`` hosts write
their jobs' ends there, never to this process).

- ``promptserve_jobs{state}``: jobs in the store by state (queued: the queue's depth), one
  ``GROUP BY`` a scrape.
- ``promptserve_jobs_finished_total{state,reason}`` and ``promptserve_job_duration_seconds{state}``
  (from start to end; a job cancelled while queued has none): jobs that ended since this
  process started, read incrementally (the jobs that ended since the last scrape's latest end).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterable
from typing import Any

import orjson
from prometheus_client import Histogram
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from promptserve.service.errors import ServiceError
from promptserve.service.jobs.records import JobState
from promptserve.service.jobs.store import JobStore

STATES: tuple[JobState, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
REASON = re.compile(r"[a-z_]{1,32}")  # the reasons the code writes; anything else is "other"


class JobCollector(Collector):
    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs
        self.since = time.time()  # the latest end counted
        self._seen: set[str] = set()  # the jobs that ended at `since`, counted already
        self._finished: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()  # two scrapes at once must not count a job twice
        # a histogram of its own (in no registry): collect() yields its samples
        self.durations = Histogram(
            "promptserve_job_duration_seconds",
            "Seconds from a job's start to its end, by the state it ended in.",
            ["state"],
            buckets=DURATION_BUCKETS,
            registry=None,
        )

    def collect(self) -> Iterable[Metric]:
        counts: dict[str, int] | None = None  # None: the job store is unavailable
        with self._lock, contextlib.suppress(ServiceError), self.jobs.db.connect() as db:
            rows = db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
            counts = {row["state"]: int(row["n"]) for row in rows}
            self._read_ends(db)
        finished = dict(self._finished)
        if counts is not None:  # without the job store, no gauge rather than a wrong 0
            jobs = Metric("promptserve_jobs", "Jobs in the job store by state.", "gauge")
            for state in STATES:
                jobs.add_sample("promptserve_jobs", {"state": state}, counts.get(state, 0))
            yield jobs
        total = Metric(
            "promptserve_jobs_finished",
            "Jobs that ended since this process started, by state and failure reason.",
            "counter",
        )
        for (ended, reason), count in sorted(finished.items()):
            labels = {"state": ended, "reason": reason}
            total.add_sample("promptserve_jobs_finished_total", labels, count)
        yield total
        yield from self.durations.collect()

    def _read_ends(self, db: Any) -> None:
        rows = db.execute(
            "SELECT id, state, error, started_at, finished_at FROM jobs "
            "WHERE finished_at >= ? ORDER BY finished_at",
            (self.since,),
        ).fetchall()
        for row in rows:
            if row["id"] in self._seen:
                continue
            if row["finished_at"] > self.since:
                self.since, self._seen = row["finished_at"], set()
            self._seen.add(row["id"])
            key = (row["state"], failure_reason(row["error"]))
            self._finished[key] = self._finished.get(key, 0) + 1
            if row["started_at"] is not None:
                seconds = max(0.0, row["finished_at"] - row["started_at"])
                self.durations.labels(row["state"]).observe(seconds)


def failure_reason(error: Any) -> str:
    """The `reason` of a job's error record (JSON text, or decoded by the driver); "none"
    without one."""
    data = orjson.loads(error) if isinstance(error, str | bytes) else error
    reason = data.get("reason") if isinstance(data, dict) else None
    if not isinstance(reason, str):
        return "none"
    return reason if REASON.fullmatch(reason) else "other"
