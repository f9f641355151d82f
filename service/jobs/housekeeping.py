"""The job runner's housekeeping: recovery after a crash and cleaning up after ended jobs.

`JobRunner` (service.jobs.runner) holds one `Housekeeping`: it runs at start-up (`recover`) and
every PRUNE_EVERY_S (`prune_when_due`). `JobFiles` are the job folders under the job root,
shared with whoever ends a job (the runner, the job client) and with job intake, which writes
the uploads there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from promptserve.service.jobs.store import Job, JobStore

if TYPE_CHECKING:
    from promptserve.service.job_uploads import UploadStore

log = logging.getLogger(__name__)

UPLOADS_DIR = "images"
PRUNE_EVERY_S = 600.0  # ended jobs past their retention are looked for this often


SUBMITTING_S = 600.0  # a job folder this young without a job row may still be being submitted


def new_runner_id() -> str:
    """``host:pid:nonce``: unique per runner; names the host so that a runner restarted on it
    can tell its predecessor's jobs from live ones."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def host_of(runner_id: str) -> str:
    return runner_id.split(":", 1)[0]


def pid_of(runner_id: str) -> int:
    return int(runner_id.split(":")[1])


@dataclass(frozen=True)
class JobFiles:
    """The job folders under `root`: ``<job id>/images`` holds a job's uploads."""

    root: Path
    keep_uploads: bool = False  # keep an ended job's uploads (for debugging a job)
    # with an s3:// store the uploads live on the object store too, so that any host's runner
    # can take the job (`service.job_uploads`); None for a local store
    shared: UploadStore | None = None

    def uploads(self, job_id: str) -> Path:
        return self.root / job_id / UPLOADS_DIR

    def share(self, job_id: str, dataset_list: Path) -> None:
        """Copy a new job's uploads (the folder of `dataset_list`) to the object store."""
        if self.shared is not None:
            self.shared.push(job_id, dataset_list)

    def drop_uploads(self, job_id: str) -> None:
        """Remove an ended job's uploaded images (unless they are to be kept), here and on the
        object store, and its folder once that is empty."""
        if self.keep_uploads:
            return
        shutil.rmtree(self.uploads(job_id), ignore_errors=True)
        self._drop_shared(job_id)
        with contextlib.suppress(OSError):
            (self.root / job_id).rmdir()

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.root / job_id, ignore_errors=True)
        self._drop_shared(job_id)

    def _drop_shared(self, job_id: str) -> None:
        if self.shared is not None:
            self.shared.drop(job_id)


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

    def __init__(
        self,
        jobs: JobStore,
        files: JobFiles,
        runner_id: str,
        *,
        retention_s: float,
        max_attempts: int = 1,
    ) -> None:
        self.jobs = jobs
        self.files = files
        self.runner_id = runner_id
        self.retention_s = retention_s
        self.max_attempts = max_attempts
        self._next_prune = 0.0  # monotonic time of the next prune

    def recover(self) -> list[str]:
        """Queue jobs that a runner of this host, now gone, left running again (or fail them,
        ``interrupted``, once tried `max_attempts` times), and remove what earlier processes
        left behind: files of jobs that have ended or are unknown to this database, and ended
        jobs past their retention. Jobs of runners on other hosts are left to their leases.
        Returns the ids of the jobs it found left running."""
        interrupted = []
        lost = "the service stopped while the job was running"
        for job in self.jobs.running_on(host_of(self.runner_id)) + self._unleased():
            if job.runner is not None and _process_alive(pid_of(job.runner)):
                continue  # another runner of this host (an API process, a job host) runs it
            if self.jobs.retry(job.id, job.runner, lost, self.max_attempts, "interrupted"):
                interrupted.append(job.id)
                if job.attempts >= self.max_attempts:
                    self.files.drop_uploads(job.id)
        if interrupted:
            log.warning(
                "%d job(s) were left running, queued again unless tried %d time(s): %s",
                len(interrupted),
                self.max_attempts,
                ", ".join(interrupted),
            )
        self.prune()
        self._remove_orphans()
        return interrupted

    def _unleased(self) -> list[Job]:
        """Running jobs without a runner: left by a version before leases, on this host."""
        return [job for job in self.jobs.in_state("running") if job.runner is None]

    def prune_when_due(self) -> None:
        if time.monotonic() >= self._next_prune:
            self.prune()

    def prune(self) -> None:
        """Forget ended jobs older than the retention, with their events and files."""
        self._next_prune = time.monotonic() + PRUNE_EVERY_S
        for job_id in self.jobs.prune(time.time() - self.retention_s):
            self.files.remove(job_id)

    def _remove_orphans(self) -> None:
        """Job folders whose job has ended (or is gone) lose their uploads; empty ones go.

        A folder of a job this database never knew, older than the database itself, belongs to
        an earlier database (lost, emptied, or moved aside as damaged): it is kept, with a
        warning, never taken for an orphan. One made in the last SUBMITTING_S is a submission
        in progress (`plan.submit_job` writes the files before the job's row), here or on a
        replica sharing this job root: it is kept too, for a later start to judge."""
        if not self.files.root.is_dir():
            return
        live = {job.id for state in ("queued", "running") for job in self.jobs.in_state(state)}
        known = self.jobs.ids()
        born = self.jobs.created_at()
        earlier = []
        for folder in self.files.root.iterdir():
            if not folder.is_dir() or folder.name in live:
                continue
            if folder.name in known:
                self.files.drop_uploads(folder.name)
            elif folder.stat().st_mtime < born:
                earlier.append(folder.name)
            elif folder.stat().st_mtime > time.time() - SUBMITTING_S:
                continue
            else:
                self.files.remove(folder.name)
        if earlier:
            log.warning(
                "job root %s holds %d folder(s) of jobs that the job database (made %s) does "
                "not know, older than it: kept, as they belong to an earlier job database: %s",
                self.files.root,
                len(earlier),
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(born)),
                ", ".join(sorted(earlier)[:10]) + (" ..." if len(earlier) > 10 else ""),
            )
