"""The job processes one runner has started, and what it knows of each.

A `JobRunner` (`service.jobs.runner`) keeps one `JobProcesses`: a mapping of job id to process
that also holds the device each one runs on, the id of the request that created the job (for
its log lines) and when its cancel flag was first seen. `forget` drops a job from all of them at
once, and `free_device` places the next job on the least used of the runner's devices.
"""

from __future__ import annotations

from collections.abc import Iterator
from multiprocessing.process import BaseProcess


class JobProcesses:
    """The running job processes of one runner, each on one of `devices`."""

    def __init__(self, devices: list[str]) -> None:
        self.devices = devices
        self.procs: dict[str, BaseProcess] = {}
        self.device_of: dict[str, str] = {}
        self.request_of: dict[str, str | None] = {}  # job id -> the request that made it
        self.cancel_seen: dict[str, float] = {}  # job id -> when its cancel flag was first seen

    def __len__(self) -> int:
        return len(self.procs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.procs

    def __iter__(self) -> Iterator[str]:
        return iter(self.procs)

    def __getitem__(self, job_id: str) -> BaseProcess:
        return self.procs[job_id]

    def add(self, job_id: str, process: BaseProcess, device: str, request_id: str | None) -> None:
        self.procs[job_id] = process
        self.device_of[job_id] = device
        self.request_of[job_id] = request_id

    def forget(self, job_id: str) -> None:
        del self.procs[job_id]
        self.cancel_seen.pop(job_id, None)
        self.device_of.pop(job_id, None)
        self.request_of.pop(job_id, None)

    def about(self, job_id: str) -> dict[str, str | None]:
        """A log line's ``extra`` for a line about one job: its request id."""
        return {"request_id": self.request_of.get(job_id)}

    def free_device(self) -> str:
        """The least used of the runner's devices."""
        used = list(self.device_of.values())
        return min(self.devices, key=used.count)
