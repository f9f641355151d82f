"""A step that keeps failing logs one line when it starts, at most one a minute with the count
while it lasts, and one when it works again (the runner's poll while its database is down)."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from promptserve.service.jobs import failures
from promptserve.service.jobs.failures import FailureLog


def test_repeated_failures_are_counted_not_logged_each(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    monkeypatch.setattr(failures.time, "monotonic", lambda: now[0])
    caplog.set_level(logging.INFO, logger="test.failures")
    steps = FailureLog(logging.getLogger("test.failures"), "job runner poll")
    down = sqlite3.OperationalError("database is locked")
    down.sqlite_errorcode = 5  # type: ignore[attr-defined]  # SQLITE_BUSY, as SQLite sets it
    for _ in range(241):  # two minutes of polls every 0.5 s, and one
        steps.failed(down)
        now[0] += 0.5
    steps.succeeded()
    steps.succeeded()
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 4, lines  # the first, one a minute later each, the recovery
    assert lines[0].startswith("job runner poll failed: database is locked")
    assert "120 more failure(s) in 60 s, 121 since 60 s ago" in lines[1]
    assert "120 more failure(s) in 60 s, 241 since 120 s ago" in lines[2]
    assert lines[-1].startswith("job runner poll works again after 241 failure(s) over 120 s")
    assert not any(record.exc_info for record in caplog.records)


def test_an_unexpected_failure_keeps_its_traceback_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.failures")
    steps = FailureLog(logging.getLogger("test.failures"), "job runner poll")
    for _ in range(5):
        steps.failed(KeyError("bug"))
    assert [bool(record.exc_info) for record in caplog.records] == [True]
