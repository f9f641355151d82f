"""``promptserve worker``: a job host, that is a job runner on its own, without the HTTP API.

A job host claims queued jobs from the shared job store and runs up to `slots` of them at once,
each in its own job process. On a GPU host the slots go one per GPU (``cuda:0``, ``cuda:1``,
...); on a CPU host they share the CPU (give each job ``job_threads`` threads accordingly).
SIGTERM or SIGINT stops it (`docker stop`, a rolling update): its running jobs go back to the
queue at once, for another worker to run from the start (their job processes are stopped and
write nothing); the run a stop cut short is not counted as an attempt. Queued ones wait.
At start-up it removes the staging leftovers of writes killed on this host from its local store,
as `serve` does (`Catalog.remove_orphaned_staging`).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from promptserve.service.catalog import Catalog
from promptserve.service.jobs.runner import JobRunner
from promptserve.service.jobs.store import JobStore
from promptserve.service.settings import Settings, resolve_device

log = logging.getLogger(__name__)


def slot_devices(device: str, slots: int | None) -> list[str]:
    """One device per job slot: every GPU once when `slots` is None on a CUDA host, else
    `slots` slots spread over the GPUs (or all on the CPU)."""
    if slots is not None and slots < 1:
        raise ValueError(f"a worker needs at least one job slot, not {slots}")
    resolved = resolve_device(device)
    if resolved.startswith("cuda"):
        import torch

        gpus = [f"cuda:{i}" for i in range(max(1, torch.cuda.device_count()))]
        count = slots if slots is not None else len(gpus)
        return [gpus[i % len(gpus)] for i in range(count)]
    return [resolved] * (slots if slots is not None else 1)


async def work(settings: Settings, devices: list[str]) -> None:
    """Run jobs on `devices` (one slot each) until SIGTERM or SIGINT."""
    await asyncio.to_thread(Catalog(settings.store).remove_orphaned_staging)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = JobRunner(
        JobStore(settings.job_database, timeout_s=settings.job_db_timeout_s),
        settings,
        slots=len(devices),
        devices=devices,
    )
    await runner.start()
    log.info(
        "job host ready, runner %s: %d job slot(s) on %s",
        runner.id,
        len(devices),
        ", ".join(devices),
    )
    try:
        await stop.wait()
    finally:
        log.info("job host stopping, runner %s", runner.id)
        await runner.stop()
