"""The job runner's housekeeping: recovery after a crash and cleaning up after ended jobs.

`JobRunner` (service.jobs.runner) mixes this in; it runs at start-up (`recover`) and every
PRUNE_EVERY_S (`prune`), and whenever a job ends (`drop_uploads`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

from promptserve.service.jobs.store import Job, JobStore

log = logging.getLogger(__name__)

UPLOADS_DIR = "images"
PRUNE_EVERY_S = 600.0  # ended jobs past their retention are looked for this often


def worker_id() -> str:
    """``host:pid:nonce``: unique per runner; names the host so that a runner restarted on it
    can tell its predecessor's jobs from live ones."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class Housekeeping:
    """What a runner leaves behind, and what a runner before it left behind."""

    jobs: JobStore
    jobs_dir: Path
    worker: str  # this runner's worker id
    retention_s: float
    keep_uploads: bool
    publish_to: dict[str, str | None]  # the object store ("url" None: none), for the uploads
    _next_prune: float

    def recover(self) -> list[str]:
        """Mark jobs that a runner of this host, now gone, left running as failed
        (interrupted), and remove what earlier processes left behind: files of jobs that have
        ended or are unknown, and ended jobs past their retention. Jobs of runners on other
        hosts are left to their leases."""
        interrupted = []
        host = self.worker.split(":", 1)[0]
        for job in self.jobs.running_on(host) + self._unleased():
            if job.worker is not None and _process_alive(int(job.worker.split(":")[1])):
                continue  # another runner of this host (an API process, a worker) runs it
            error = {
                "reason": "interrupted",
                "message": "the service stopped while the job was running",
            }
            if self.jobs.finish(
                job.id, "failed", error=error, message="job interrupted", worker=job.worker
            ):
                interrupted.append(job.id)
                self.drop_uploads(job.id)
        if interrupted:
            log.warning(
                "marked %d job(s) left running as interrupted: %s",
                len(interrupted),
                ", ".join(interrupted),
            )
        self.prune()
        self._remove_orphans()
        return interrupted

    def _unleased(self) -> list[Job]:
        """Running jobs without a worker: left by a version before leases, on this host."""
        return [job for job in self.jobs.in_state("running") if job.worker is None]

    def prune(self) -> None:
        """Forget ended jobs older than the retention, with their events and files."""
        self._next_prune = time.monotonic() + PRUNE_EVERY_S
        for job_id in self.jobs.prune(time.time() - self.retention_s):
            shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)

    def _remove_orphans(self) -> None:
        """Job folders whose job has ended (or is gone) lose their uploads; empty ones go."""
        if not self.jobs_dir.is_dir():
            return
        live = {job.id for state in ("queued", "running") for job in self.jobs.in_state(state)}
        known = self.jobs.ids()
        for folder in self.jobs_dir.iterdir():
            if not folder.is_dir() or folder.name in live:
                continue
            if folder.name not in known:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                self.drop_uploads(folder.name)

    def drop_uploads(self, job_id: str) -> None:
        """Remove an ended job's uploaded images (unless they are to be kept), and its folder
        once that is empty."""
        if self.keep_uploads:
            return
        folder = self.jobs_dir / job_id
        shutil.rmtree(folder / UPLOADS_DIR, ignore_errors=True)
        from promptserve.service.job_uploads import UploadStore  # here: it loads torch

        store = UploadStore.at(self.publish_to)
        if store is not None:
            store.drop(job_id)
        with contextlib.suppress(OSError):
            folder.rmdir()
