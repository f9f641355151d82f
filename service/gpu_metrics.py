"""GPU memory and utilisation per CUDA device, read when scraped, in the process that runs the
engine (job processes hold their own memory, not counted here). Absent on the CPU.

- ``promptserve_gpu_memory_allocated_bytes{device}``: tensors torch holds
  (``torch.cuda.memory_allocated``), ``promptserve_gpu_memory_reserved_bytes{device}``: what
  its caching allocator has taken from the driver (``torch.cuda.memory_reserved``). ONNX
  Runtime's CUDA arena is its own: it shows in neither (``nvidia-smi`` sees it).
- ``promptserve_gpu_utilization_ratio{device}``: the share of the last sample period a kernel
  ran, 0..1 (``torch.cuda.utilization``, which needs pynvml; left out without it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from promptserve.service.metrics import Metrics

log = logging.getLogger(__name__)


class DeviceQuery(Protocol):
    """What the collector asks of the CUDA runtime (faked in tests)."""

    def count(self) -> int: ...

    def allocated(self, index: int) -> int: ...

    def reserved(self, index: int) -> int: ...

    def utilization(self, index: int) -> float | None:
        """Percent busy, or None when it cannot be read (no pynvml)."""


class TorchCuda:
    def count(self) -> int:
        import torch

        # makes no CUDA context: the memory figures read 0 until torch has one
        return int(torch.cuda.device_count())

    def allocated(self, index: int) -> int:
        import torch

        return int(torch.cuda.memory_allocated(index))

    def reserved(self, index: int) -> int:
        import torch

        return int(torch.cuda.memory_reserved(index))

    def utilization(self, index: int) -> float | None:
        import torch

        try:
            return float(torch.cuda.utilization(index))
        except Exception:  # pynvml missing, or NVML refused: no figure, never a failed scrape
            return None


class GpuCollector(Collector):
    def __init__(self, query: DeviceQuery) -> None:
        self.query = query

    def collect(self) -> Iterable[Metric]:
        count = self.query.count()
        if not count:
            return
        families = {
            "allocated": Metric(
                "promptserve_gpu_memory_allocated_bytes",
                "Bytes of tensors torch holds on the device.",
                "gauge",
            ),
            "reserved": Metric(
                "promptserve_gpu_memory_reserved_bytes",
                "Bytes torch's caching allocator holds on the device.",
                "gauge",
            ),
        }
        busy = Metric(
            "promptserve_gpu_utilization_ratio",
            "Share of the last sample period a kernel ran on the device, 0..1.",
            "gauge",
        )
        for index in range(count):
            labels = {"device": f"cuda:{index}"}
            families["allocated"].add_sample(
                families["allocated"].name, labels, self.query.allocated(index)
            )
            families["reserved"].add_sample(
                families["reserved"].name, labels, self.query.reserved(index)
            )
            percent = self.query.utilization(index)
            if percent is not None:
                busy.add_sample(busy.name, labels, percent / 100.0)
        yield from families.values()
        if busy.samples:
            yield busy


def add_gpu_metrics(metrics: Metrics, device: str, query: DeviceQuery | None = None) -> None:
    """The GPU families, when the engine runs on CUDA (on the CPU there are none)."""
    if device.startswith("cuda"):
        metrics.add_collector(GpuCollector(query if query is not None else TorchCuda()))
