"""Storage faults: which exceptions of the disk and of the job database a client should retry.

A full disk, a read-only store, a job database that is locked by another process, damaged, or
(Postgres) unreachable is not a bug of the request or of the service: the answer is a 503 (507
for a full disk or quota) with ``Retry-After``, and the log gets one line, not a traceback.
`classify` is the one place that tells these faults from other errors, by exception type and
errno / SQLite result code; `service.public_errors.public_error` answers through it, and the job
database (`service.jobs.opening`) raises its errors already mapped. Imports no web framework
and no database driver (psycopg is looked up only once something imported it).
"""

from __future__ import annotations

import errno
import sqlite3
import sys
from typing import NamedTuple

RETRY_AFTER_S = {503: 5, 507: 60}  # a lock or an outage passes soon; freeing disk takes longer

# SQLite's primary result codes (the low byte of sqlite_errorcode)
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY, SQLITE_IOERR = 5, 6, 8, 10
SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_PROTOCOL, SQLITE_NOTADB = 11, 13, 14, 15, 26


class Fault(NamedTuple):
    """A storage fault as a client sees it."""

    status: int
    code: str
    message: str

    @property
    def retry_after_s(self) -> int:
        return RETRY_AFTER_S[self.status]


FULL = Fault(507, "storage_full", "no space is left on the service's storage; retry later")
READ_ONLY = Fault(503, "storage_unavailable", "the service's storage is read-only; retry later")
BROKEN = Fault(503, "storage_unavailable", "the service's storage cannot be written; retry later")
LOCKED = Fault(503, "jobs_unavailable", "the job database is locked by another process")
DAMAGED = Fault(503, "jobs_unavailable", "the job database is damaged; see the server log")
UNREACHABLE = Fault(503, "jobs_unavailable", "the job database cannot be reached; retry later")

_OS_FAULTS = {
    errno.ENOSPC: FULL,
    errno.EDQUOT: FULL,
    errno.EROFS: READ_ONLY,
    errno.EIO: BROKEN,
    errno.EACCES: BROKEN,
    errno.EPERM: BROKEN,
}
_SQLITE_FAULTS = {
    SQLITE_FULL: FULL,
    SQLITE_READONLY: READ_ONLY,
    SQLITE_BUSY: LOCKED,
    SQLITE_LOCKED: LOCKED,
    SQLITE_CORRUPT: DAMAGED,
    SQLITE_NOTADB: DAMAGED,
    SQLITE_IOERR: UNREACHABLE,
    SQLITE_CANTOPEN: UNREACHABLE,
    SQLITE_PROTOCOL: UNREACHABLE,
}
POSTGRES_DISK_FULL = "53100"  # SQLSTATE disk_full


def classify(exc: BaseException) -> Fault | None:
    """The fault `exc` is, or None when it is no storage fault (a bug, a bad request)."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return _SQLITE_FAULTS.get(code & 0xFF) if isinstance(code, int) else None
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(exc, psycopg.OperationalError):
        return FULL if getattr(exc, "sqlstate", None) == POSTGRES_DISK_FULL else UNREACHABLE
    if isinstance(exc, OSError):
        return _OS_FAULTS.get(exc.errno) if exc.errno is not None else None
    return None


def fault_types() -> tuple[type[Exception], ...]:
    """The exception families `classify` looks into (the HTTP layer routes them to it)."""
    found: list[type[Exception]] = [OSError, sqlite3.Error]
    try:
        import psycopg
    except ImportError:  # the one-host default needs no Postgres driver
        return tuple(found)
    return (*found, psycopg.Error)
