"""Stopping job processes: SIGTERM, then SIGKILL for the ones that outlive a shared wait."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from multiprocessing.process import BaseProcess
from typing import Any

log = logging.getLogger(__name__)


def stop_all(
    procs: Mapping[str, BaseProcess], wait_s: float, about: Callable[[str], dict[str, Any]]
) -> None:
    """SIGTERM every job process of `procs` (job id -> process), then give them `wait_s` all
    together before each one still alive is killed; `about` is a log line's ``extra``."""
    for process in procs.values():
        if process.is_alive() and process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
    start = time.monotonic()
    for job_id, process in procs.items():
        process.join(max(0.0, start + wait_s - time.monotonic()))
        if process.is_alive():
            log.warning(
                "job %s: its process outlived SIGTERM by %.0f s, killed",
                job_id,
                wait_s,
                extra=about(job_id),
            )
            process.kill()
            process.join()
        else:
            log.info(
                "job %s: its process ended %.1f s after SIGTERM",
                job_id,
                time.monotonic() - start,
                extra=about(job_id),
            )


def terminate(process: BaseProcess, wait_s: float) -> None:
    """SIGTERM one process, SIGKILL after `wait_s`.

    Only one still alive: `is_alive` reads an exit first. A job process forked from the job
    server (`service.jobs.starting`) is reaped by that server the moment it exits, so its pid
    may already belong to another process, which a signal sent on the strength of an exit not
    yet read would reach (`Process.terminate` sends without looking)."""
    if not process.is_alive():
        return
    process.terminate()
    process.join(wait_s)
    if process.is_alive():
        process.kill()
        process.join()
