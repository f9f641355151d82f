"""Starting job processes: how each one is made, and what it takes along from its runner.

A job process on the CPU is forked from a server process (multiprocessing's ``forkserver``)
that imported torch, torchvision, open_clip and the training code once, at the first job of its
runner's process: a job then starts without importing them again, which was most of a job's
start (about 5 s on two busy cores). The server is a fresh interpreter started for this alone,
so it holds none of the service's threads or sockets, and it never touches CUDA.

A job on CUDA is ``spawn``-ed, a fresh interpreter as before: it must set
``CUDA_VISIBLE_DEVICES`` before torch loads (`models.devices.pin_gpu`), and a process forked
from one that had loaded torch would need CUDA left untouched by everything the server
imported, which only a GPU host can check (bench/gpu_check.py's pinned_job step).

The server keeps the environment it was started with, so a launch carries the runner's
(`JobLaunch.environ`) and the job process takes it first thing, as a spawned one would have it
(multiprocessing already hands over the working directory and `sys.path`). And its parent is
the server, not the runner: a job process knows its runner is gone when its parent changes (the
server exits when the runner's process does) or the runner's pid is no longer a live process
(`runner_alive`).

The server imports for seconds when it starts (tens of seconds on a busy host), and a process
start waits for that; a runner's poll blocked there renews no lease, so its jobs would be taken
over. So a runner claims no CPU job until its process's server is ready (`job_server_ready`):
the first call starts the server and its imports in a thread (a trivial process started and
joined), and jobs wait in the queue, unleased, meanwhile (or another runner takes them).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from multiprocessing.context import ForkServerContext, SpawnContext

# what a CPU job's process would otherwise import at its start, imported once by the server
PRELOAD = (
    "torch",
    "torchvision",
    "open_clip",
    "promptserve.training.api",
    "promptserve.service.jobs.gate",
    "promptserve.service.jobs.process",
)


def job_context(device: str) -> SpawnContext | ForkServerContext:
    """How the process of a job on `device` is started (see the module docstring)."""
    if device.startswith("cuda") or "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))  # read when the server starts
    return context


def runner_alive(pid: int) -> bool:
    """Whether `pid` is still a process this one may signal (the runner runs as the same user:
    a process of another user under that pid means the runner is gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


_server_ready = threading.Event()
_server_warming = threading.Lock()


def job_server_ready(device: str) -> bool:
    """Whether a job on `device` can start now without waiting for the job server's imports;
    if not, they are started (once, in a thread) and a later call says so."""
    context = job_context(device)
    if context.get_start_method() != "forkserver" or _server_ready.is_set():
        return True
    if _server_warming.acquire(blocking=False):  # released never: one warm-up per process
        threading.Thread(target=_warm, args=(context,), name="job-server", daemon=True).start()
    return False


def _warm(context: ForkServerContext) -> None:
    process = context.Process(target=int)  # returns at once: the server has imported by then
    process.start()
    process.join()
    _server_ready.set()
