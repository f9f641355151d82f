"""ONNX Runtime execution providers: which ones a session asks for, with which options, and the
check that it really got them.

ONNX Runtime answers a provider that cannot load (a missing CUDA library, a driver too old for
the wheel's CUDA) with a warning and a CPU-only session; `get_available_providers()` only lists
what the wheel was built with. So nothing here trusts either: `cuda_problem` opens a one-node
probe session and reads `session.get_providers()`, and `open_session` refuses any session that
lacks a provider it asked for, or whose options ONNX Runtime dropped on its own fallback.
"""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch

from promptserve.models.errors import ProviderError
from promptserve.models.hashing import sha256_file

CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
CPU = "CPUExecutionProvider"
TENSORRT_LIBRARIES = ("libnvinfer.so.10", "libnvonnxparser.so.10")

Provider = str | tuple[str, dict[str, Any]]


@dataclass(frozen=True, kw_only=True)
class OnnxOptions:
    """How ONNX Runtime runs the graph; all but `io_binding` matter only on CUDA."""

    fp16: bool = False  # float16 graph (I/O and the block list stay float32); CUDA only
    io_binding: bool = True  # bind torch tensors in place (on CUDA: no host round trip)
    spinning: bool = False  # CPU: the intra-op threads spin-wait between operators and runs
    tensorrt: bool = False  # TensorRT provider first (an error when libnvinfer does not load)
    trt_cache_dir: Path | None = None  # TensorRT caches, one folder per graph and profile
    max_batch_size: int = 32  # TensorRT's optimisation profile: batch 1..max
    gpu_mem_limit: int | None = None  # bytes one session's CUDA arena may hold; None: no limit
    tf32: bool = False  # TF32 matmuls on CUDA (faster, ~1e-3 off the CPU's float32)


def provider_name(provider: Provider) -> str:
    return provider if isinstance(provider, str) else provider[0]


def onnx_providers(
    device: torch.device, options: OnnxOptions | None = None, path: Path | None = None
) -> list[Provider]:
    """Execution providers for `device`, CPU last (it runs the few ops the GPU ones lack).
    On CUDA this raises ProviderError, naming what is missing, when CUDA (or TensorRT, when
    asked) cannot run here."""
    if device.type != "cuda":
        return [CPU]
    options = options or OnnxOptions()
    problem = cuda_problem(device.index or 0)
    if problem is not None:
        raise ProviderError(f"device {device} needs ONNX Runtime's CUDA provider: {problem}")
    providers: list[Provider] = [(CUDA, cuda_options(device, options)), CPU]
    if options.tensorrt:
        problem = tensorrt_problem()
        if problem is not None:
            raise ProviderError(f"onnx_tensorrt needs TensorRT: {problem}")
        providers.insert(0, (TENSORRT, tensorrt_options(device, options, path)))
    return providers


def cuda_options(device: torch.device, options: OnnxOptions) -> dict[str, Any]:
    """CUDA provider options that bound memory and keep latency flat: the arena grows by what
    is asked (not to the next power of two) up to `gpu_mem_limit`; cuDNN picks convolution
    algorithms by heuristic instead of timing them all on every new batch size."""
    cuda: dict[str, Any] = {
        "device_id": device.index or 0,
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "HEURISTIC",
        "use_tf32": int(options.tf32),
    }
    if options.gpu_mem_limit is not None:
        cuda["gpu_mem_limit"] = options.gpu_mem_limit
    return cuda


def tensorrt_options(
    device: torch.device, options: OnnxOptions, path: Path | None
) -> dict[str, Any]:
    """TensorRT provider options: fp16 as asked, caches on disk, one profile for batch
    1..`max_batch_size` over every dynamic input.

    ONNX Runtime's cache key hashes the model's file name and node names, never its weights,
    so two classifiers on one architecture would share an engine: each graph gets its own
    cache folder, named by its content hash, precision and profile."""
    trt: dict[str, Any] = {"device_id": device.index or 0, "trt_fp16_enable": options.fp16}
    if options.trt_cache_dir is not None and path is not None:
        cache = options.trt_cache_dir / tensorrt_cache_key(path, options)
        cache.mkdir(parents=True, exist_ok=True)
        trt |= {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_engine_cache_prefix": cache.name,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
        }
    profiles = batch_profiles(path, options.max_batch_size) if path is not None else None
    if profiles is not None:
        low, high = profiles
        trt |= {
            "trt_profile_min_shapes": low,
            "trt_profile_opt_shapes": high,
            "trt_profile_max_shapes": high,
        }
    return trt


def tensorrt_cache_key(path: Path, options: OnnxOptions) -> str:
    """The graph's content hash, precision and batch profile, as one folder name."""
    precision = "fp16" if options.fp16 else "fp32"
    return f"{sha256_file(path)[:32]}-{precision}-b1-{options.max_batch_size}"


def batch_profiles(path: Path, max_batch: int) -> tuple[str, str] | None:
    """TensorRT's min and max shapes ("name:1x3x224x224,...") for every graph input whose
    batch axis is dynamic; None when some input has another dynamic axis."""
    import onnx

    low, high = [], []
    for graph_input in onnx.load(str(path), load_external_data=False).graph.input:
        dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
        if not dims or dims[0]:
            continue  # no batch axis to profile
        if not all(dims[1:]):
            return None
        rest = "".join(f"x{d}" for d in dims[1:])
        low.append(f"{graph_input.name}:1{rest}")
        high.append(f"{graph_input.name}:{max_batch}{rest}")
    return (",".join(low), ",".join(high)) if low else None


def open_session(
    model: str | bytes,
    session_options: ort.SessionOptions,
    providers: list[Provider],
    **kwargs: Any,
) -> ort.InferenceSession:
    """An InferenceSession that really runs on `providers`: ProviderError when ONNX Runtime
    left one out (its silent CPU fallback) or dropped its device id (its fallback session)."""
    session = ort.InferenceSession(
        model, sess_options=session_options, providers=providers, **kwargs
    )
    check_providers(session, providers)
    return session


def check_providers(session: ort.InferenceSession, providers: list[Provider]) -> None:
    got = session.get_providers()
    missing = [provider_name(p) for p in providers if provider_name(p) not in got]
    if missing:
        raise ProviderError(
            f"ONNX Runtime did not load {', '.join(missing)} (the session got {got}); "
            f"{(CUDA in missing and cuda_problem(0)) or 'its reason is in the log'}"
        )
    held = session.get_provider_options()
    for provider in providers:
        if isinstance(provider, tuple) and "device_id" in provider[1]:
            wanted = str(provider[1]["device_id"])
            if str(held.get(provider[0], {}).get("device_id", wanted)) != wanted:
                raise ProviderError(f"{provider[0]} runs on another device than {wanted}")


@functools.cache
def cuda_problem(device_id: int = 0) -> str | None:
    """Why ONNX Runtime's CUDA provider cannot run on GPU `device_id` here (the library or
    device that is missing), or None when a probe session really got it."""
    if CUDA not in ort.get_available_providers():
        return f"this onnxruntime build has no CUDA provider ({ort.__version__}, CPU only)"
    ort.preload_dlls()  # the wheel's CUDA and cuDNN libraries, whether or not torch loaded them
    missing = library_problem(_capi("libonnxruntime_providers_cuda.so"))
    if missing is not None:
        return f"{missing} (onnxruntime {ort.__version__} is built for CUDA {_ort_cuda()})"
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the reason is reported here, not as a warning
    try:
        session = ort.InferenceSession(
            probe_graph(), options, providers=[(CUDA, {"device_id": device_id}), CPU]
        )
    except Exception as exc:  # an invalid device id raises
        return f"no CUDA device {device_id}: {exc}"
    if CUDA not in session.get_providers():
        return f"the CUDA provider loaded but found no usable GPU {device_id} (driver?)"
    return None


@functools.cache
def tensorrt_problem() -> str | None:
    """Why the TensorRT provider cannot run here, or None when its libraries load."""
    if TENSORRT not in ort.get_available_providers():
        return "this onnxruntime build has no TensorRT provider"
    for library in TENSORRT_LIBRARIES:
        missing = library_problem(library)
        if missing is not None:
            return f"{missing} (install TensorRT 10 for CUDA {_ort_cuda()})"
    return None


def library_problem(library: str) -> str | None:
    """The loader's error for a shared library (what it lacks), or None when it loads."""
    if library.endswith("libonnxruntime_providers_cuda.so"):
        library_problem(_capi("libonnxruntime_providers_shared.so"))
    try:
        ctypes.CDLL(library)
    except OSError as exc:
        return str(exc)
    return None


def _capi(name: str) -> str:
    return os.path.join(os.path.dirname(ort.__file__), "capi", name)


def _ort_cuda() -> str:
    from onnxruntime.capi import build_and_package_info

    return str(getattr(build_and_package_info, "cuda_version", "unknown"))


@functools.cache
def probe_graph() -> bytes:
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [value("x", TensorProto.FLOAT, [1])],
        [value("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()  # type: ignore[no-any-return]
