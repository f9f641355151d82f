"""Which device a process runs on, decided and checked before anything opens on it.

`choose_device` turns a device setting into a device and the ONNX Runtime providers it will
use: ``cuda`` that cannot run here is a `ProviderError` naming what is missing (no driver, a
CUDA library, the provider), so the service can refuse to start instead of serving on the CPU
or never becoming ready; ``auto`` picks CUDA only when it really works and logs its choice.
`pin_gpu` gives a fresh process one GPU through ``CUDA_VISIBLE_DEVICES``.

Nothing here imports torch at module level: `pin_gpu` must run before torch starts CUDA.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from dataclasses import dataclass

from promptserve.models.errors import ProviderError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceChoice:
    """What a device setting resolved to."""

    asked: str  # the setting: auto, cpu, cuda or cuda:N
    device: str  # the torch device the engine runs on
    providers: tuple[str, ...]  # ONNX Runtime providers its sessions get (CPU last)
    reason: str = ""  # why auto did not choose CUDA


@functools.cache
def choose_device(asked: str, engine: str = "onnx", probe: bool = True) -> DeviceChoice:
    """The device for a setting (`probe`: also open a probe ONNX Runtime session on CUDA, which
    creates a CUDA context; without it only torch's view is checked). Cached: one decision and
    one log line per process."""
    from promptserve.models.providers import CPU, CUDA

    cpu = DeviceChoice(asked, "cpu", (CPU,))
    if asked == "cpu":
        return cpu
    device = "cuda" if asked == "auto" else asked
    problem = cuda_device_problem(device, engine if probe else "torchscript")
    if problem is None:
        choice = DeviceChoice(asked, device, (CUDA, CPU) if engine == "onnx" else ())
        log.info("device %s: running on %s (providers %s)", asked, device, choice.providers)
        return choice
    if asked != "auto":
        raise ProviderError(f"PROMPTSERVE_DEVICE={asked} cannot run here: {problem}")
    log.warning("device auto: running on the CPU because CUDA is unusable: %s", problem)
    return DeviceChoice(asked, "cpu", (CPU,), reason=problem)


def cuda_device_problem(device: str, engine: str = "onnx") -> str | None:
    """What keeps `device` ("cuda" or "cuda:N") from running the `engine` here, or None."""
    import torch

    index = torch.device(device).index or 0
    if not torch.cuda.is_available():
        return f"torch sees no CUDA GPU ({torch_cuda_problem()})"
    if index >= torch.cuda.device_count():
        return f"there is no GPU {index} (torch sees {torch.cuda.device_count()})"
    if engine != "onnx":
        return None
    from promptserve.models.providers import cuda_problem

    return cuda_problem(index)


def torch_cuda_problem() -> str:
    """torch's own words on why CUDA is unavailable, with its version and CUDA build."""
    import torch

    build = f"torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none: CPU only'}"
    if torch.version.cuda is None:
        return build
    try:
        torch.cuda.init()
    except Exception as exc:  # "Found no NVIDIA driver on your system..."
        return f"{build}: {str(exc).splitlines()[0]}"
    return build


def pin_gpu(device: str) -> str:
    """Make the GPU of `device` ("cuda:N") the only one this process sees, by setting
    ``CUDA_VISIBLE_DEVICES`` before CUDA starts (then torch's allocator, autocast's checks and
    ONNX Runtime all land on it); returns the name to use from now on ("cuda:0"). Other
    devices come back unchanged. Call it first thing in a fresh (spawned) process."""
    if not device.startswith("cuda"):
        return device
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise RuntimeError(f"CUDA already started in this process; cannot pin it to {device}")
    index = int(device.partition(":")[2] or 0)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else None
    if ids is not None and index >= len(ids):
        raise ProviderError(f"{device} is not among CUDA_VISIBLE_DEVICES={visible}")
    os.environ["CUDA_VISIBLE_DEVICES"] = ids[index] if ids is not None else str(index)
    log.info("pinned to GPU %s (CUDA_VISIBLE_DEVICES)", os.environ["CUDA_VISIBLE_DEVICES"])
    return "cuda:0"


def check_engine_device(
    asked: str, engine: str, *, fp16: bool, tensorrt: bool, probe: bool = True
) -> DeviceChoice:
    """`choose_device`, plus what the engine options need of it: fp16 and TensorRT need CUDA
    (and TensorRT its libraries). ProviderError names what is missing."""
    choice = choose_device(asked, engine, probe)
    if fp16 and choice.device == "cpu":
        raise ProviderError(f"onnx_fp16 needs CUDA, and {asked} runs on the CPU {choice.reason}")
    if tensorrt and choice.device != "cpu" and probe:
        from promptserve.models.providers import tensorrt_problem

        problem = tensorrt_problem()
        if problem is not None:
            raise ProviderError(f"onnx_tensorrt cannot run here: {problem}")
    return choice
