"""The spawned process of gpu_check's pinned-job step, in a module of its own so the child
imports nothing heavy before it pins itself (as `service.jobs.process.run_job` does)."""

from __future__ import annotations

import os
from typing import Any

from promptserve.models.devices import pin_gpu


def pinned_child(queue: Any, go: Any, device: str, use_gpu: bool) -> None:
    """Pin to `device`, then (with `use_gpu`) load torch and hold memory on the GPU until
    `go` is set, so nvidia-smi can show which GPU the process is on."""
    pinned = pin_gpu(device)
    seen: dict[str, Any] = {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "device": pinned}
    seen["pid"] = os.getpid()
    if use_gpu:
        import torch

        keep = torch.ones(1 << 20, device=pinned)  # a context and a block on the pinned GPU
        seen["gpus_seen"] = torch.cuda.device_count()
        seen["bytes_held"] = keep.numel() * keep.element_size()
    queue.put(seen)
    go.wait(60)
