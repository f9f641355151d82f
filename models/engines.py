"""Runtime engines over an artifact's exported visual graph: ONNX Runtime and TorchScript
sessions, each a callable pixels [B, 3, S, S] -> normalised embeddings [B, D].

`models.export` writes the graphs and checks them through these engines; the classifier loader
and the service run them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor

ONNX_FILE = "visual.onnx"
TORCHSCRIPT_FILE = "visual.torchscript.pt"
INPUT_NAME = "pixels"
OUTPUT_NAME = "embeddings"

EngineKind = Literal["onnx", "torchscript"]


class VisualEngine(Protocol):
    """A loaded visual graph: pixels [B, 3, S, S] -> normalised embeddings [B, D]."""

    def __call__(self, pixels: Tensor) -> Tensor: ...


@contextmanager
def quiet_jit_deprecation() -> Iterator[None]:
    # torch 2.14 deprecates torch.jit.*; the artifact still ships TorchScript by design
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated")
        yield


@dataclass(frozen=True, kw_only=True)
class OnnxOptions:
    """How ONNX Runtime runs the graph; all but `io_binding` matter only on CUDA."""

    fp16: bool = False  # float16 graph (inputs/outputs, LayerNorm, Softmax stay float32); CUDA
    io_binding: bool = True  # bind torch tensors in place (on CUDA: no host round trip)
    tensorrt: bool = False  # TensorRT provider first, when ONNX Runtime has it
    trt_cache_dir: Path | None = None  # TensorRT engine and timing caches (slow to build)
    max_batch_size: int = 32  # TensorRT's optimisation profile: batch 1..max


FP32_OPS = ["LayerNormalization", "Softmax", "ReduceL2"]  # kept float32 in the fp16 graph


class OnnxEngine:
    """An ONNX Runtime session over ``visual.onnx``; CUDA (and TensorRT) first when asked for
    and present. With IO binding the input is read from the torch tensor's memory and the
    output written into a torch tensor on `device`, so on CUDA pixels already on the GPU
    stay there."""

    def __init__(
        self,
        path: Path,
        device: str = "cpu",
        threads: int | None = None,
        options: OnnxOptions | None = None,
    ) -> None:
        self.options = options or OnnxOptions()
        self.device = torch.device(device)
        if self.options.fp16 and self.device.type != "cuda":
            raise ValueError(
                "fp16 needs device 'cuda': ONNX Runtime's CPU provider has few float16 kernels"
            )
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
        session_options.log_severity_level = 3  # errors only; ORT warns about unused initializers
        providers = onnx_providers(self.device, self.options, path)
        model: str | bytes = float16_graph(path) if self.options.fp16 else str(path)
        self.session = ort.InferenceSession(
            model, sess_options=session_options, providers=providers
        )
        width = self.session.get_outputs()[0].shape[-1]
        self.width = width if isinstance(width, int) else None  # D, when the graph fixes it
        self.bound = self.options.io_binding and self.width is not None

    def __call__(self, pixels: Tensor) -> Tensor:
        if self.bound:
            return self._run_bound(pixels)
        array = np.ascontiguousarray(pixels.detach().to("cpu", torch.float32).numpy())
        (out,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(out).to(self.device)

    def _run_bound(self, pixels: Tensor) -> Tensor:
        x = pixels.detach().to(self.device, torch.float32).contiguous()  # [B, 3, S, S]
        out = torch.empty((x.shape[0], self.width or 0), dtype=torch.float32, device=self.device)
        kind, index = self.device.type, self.device.index or 0
        binding = self.session.io_binding()
        binding.bind_input(INPUT_NAME, kind, index, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(OUTPUT_NAME, kind, index, np.float32, tuple(out.shape), out.data_ptr())
        if kind == "cuda":  # torch wrote `x` on its own stream; ONNX Runtime reads on another
            torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        return out


def float16_graph(path: Path) -> bytes:
    """``visual.onnx`` converted to float16 (what `OnnxOptions.fp16` runs), as model bytes."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(
        onnx.load(str(path)), keep_io_types=True, op_block_list=FP32_OPS
    )
    # the converter inserts one Cast per use of an initializer that several float32 ops share
    # (e.g. a LayerNorm weight used in every prompt pass), all with the same name and output
    seen: set[tuple[str, ...]] = set()
    unique = []
    for node in model.graph.node:
        if tuple(node.output) not in seen:
            seen.add(tuple(node.output))
            unique.append(node)
    del model.graph.node[:]
    model.graph.node.extend(unique)
    return model.SerializeToString()  # type: ignore[no-any-return]


def onnx_providers(
    device: torch.device, options: OnnxOptions | None = None, path: Path | None = None
) -> list[str | tuple[str, dict[str, Any]]]:
    """Execution providers for `device`; CPU always last, as ONNX Runtime's fallback."""
    available = ort.get_available_providers()
    if device.type != "cuda" or "CUDAExecutionProvider" not in available:
        return ["CPUExecutionProvider"]
    cuda = ("CUDAExecutionProvider", {"device_id": device.index or 0})
    providers: list[str | tuple[str, dict[str, Any]]] = [cuda, "CPUExecutionProvider"]
    if options is not None and options.tensorrt and "TensorrtExecutionProvider" in available:
        providers.insert(0, ("TensorrtExecutionProvider", tensorrt_options(device, options, path)))
    return providers


def tensorrt_options(
    device: torch.device, options: OnnxOptions, path: Path | None
) -> dict[str, Any]:
    """TensorRT provider options: fp16 as asked, caches on disk, one profile for batch
    1..`max_batch_size` at the graph's input side."""
    trt: dict[str, Any] = {"device_id": device.index or 0, "trt_fp16_enable": options.fp16}
    if options.trt_cache_dir is not None:
        options.trt_cache_dir.mkdir(parents=True, exist_ok=True)
        cache = str(options.trt_cache_dir)
        trt |= {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": cache,
        }
    side = input_side(path) if path is not None else None
    if side is not None:
        shape = f"{INPUT_NAME}:{{}}x3x{side}x{side}"
        trt |= {
            "trt_profile_min_shapes": shape.format(1),
            "trt_profile_opt_shapes": shape.format(options.max_batch_size),
            "trt_profile_max_shapes": shape.format(options.max_batch_size),
        }
    return trt


def input_side(path: Path) -> int | None:
    """S of the graph's input [B, 3, S, S], read from the file's header (no session)."""
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    side = dims[-1].dim_value if len(dims) == 4 else 0
    return int(side) or None


class TorchScriptEngine:
    """``visual.torchscript.pt`` loaded onto `device`."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        self.device = torch.device(device)
        with quiet_jit_deprecation():
            self.module = torch.jit.load(str(path), map_location=self.device).eval()

    def __call__(self, pixels: Tensor) -> Tensor:
        with torch.inference_mode():
            return self.module(pixels.to(self.device, torch.float32))  # type: ignore[no-any-return]


def open_engine(
    directory: Path,
    engine: EngineKind,
    device: str = "cpu",
    threads: int | None = None,
    options: OnnxOptions | None = None,
) -> VisualEngine:
    """The artifact's visual graph in `directory` as a callable engine (`threads`: ONNX
    Runtime's intra-op threads, min(4, CPUs) when None; `options`: see `OnnxOptions`)."""
    if engine == "onnx":
        return OnnxEngine(directory / ONNX_FILE, device, threads, options)
    if engine == "torchscript":
        return TorchScriptEngine(directory / TORCHSCRIPT_FILE, device)
    raise ValueError(f"unknown engine {engine!r}; choose 'onnx' or 'torchscript'")
