"""Runtime engines over an artifact's exported visual graph: ONNX Runtime and TorchScript
sessions, each a callable pixels [B, 3, S, S] -> normalised embeddings [B, D].

`models.export` writes the graphs and checks them through these engines; the classifier loader
and the service run them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor

from promptserve.models.fp16 import check_fp16, float16_graph
from promptserve.models.providers import OnnxOptions, onnx_providers, open_session

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


class OnnxEngine:
    """An ONNX Runtime session over ``visual.onnx``; CUDA (and TensorRT) first when the device
    is CUDA, and an error (`ProviderError`) when they cannot run, never a quiet CPU session.
    With IO binding every input is read from its torch tensor's memory and the output written
    into a torch tensor on `device`, so on CUDA tensors already on the GPU stay there. A
    float16 graph is checked against the float32 one when it opens (`models.fp16`)."""

    def __init__(
        self,
        path: Path,
        device: str = "cpu",
        threads: int | None = None,
        options: OnnxOptions | None = None,
        model: Callable[[Path], bytes] | None = None,
    ) -> None:
        self.options = options or OnnxOptions()
        self.device = torch.device(device)
        if self.options.fp16 and self.device.type != "cuda":
            raise ValueError(
                "fp16 needs device 'cuda': ONNX Runtime's CPU provider has few float16 kernels"
            )
        # before any float16 graph opens: in a CPU-only session it crashes ORT's optimiser
        providers = onnx_providers(self.device, self.options, path)
        session_options = engine_session_options(self.device, threads, self.options.spinning)
        if self.options.fp16:
            self.session = open_session(
                float16_graph(path),
                session_options,
                providers,
                disabled_optimizers=["NchwcTransformer"],
            )
            full = open_session(str(path), session_options, providers)
            self.fp16_cosine = check_fp16(full, self.session)
            del full
        else:  # `model`: the graph rewritten first (`models.precision.int8_graph`)
            graph = str(path) if model is None else model(path)
            self.session = open_session(graph, session_options, providers)
        self.providers: list[str] = self.session.get_providers()  # what it really runs on
        width = self.session.get_outputs()[0].shape[-1]
        self.width = width if isinstance(width, int) else None  # D, when the graph fixes it
        self.bound = self.options.io_binding and self.width is not None

    def __call__(self, pixels: Tensor) -> Tensor:
        return self.run({INPUT_NAME: pixels})

    def run(self, feeds: dict[str, Tensor]) -> Tensor:
        """Inputs {name: [B, ...]} (pixels and, for a shared graph, the classifier tensors)
        -> embeddings [B, D] on `device`."""
        if self.bound:
            return self._run_bound(feeds)
        arrays = {name: host_array(tensor) for name, tensor in feeds.items()}
        (out,) = self.session.run([OUTPUT_NAME], arrays)
        return torch.from_numpy(out).to(self.device)

    def _run_bound(self, feeds: dict[str, Tensor]) -> Tensor:
        # held until the run ends: ONNX Runtime reads their memory
        inputs = {
            n: t.detach().to(self.device, torch.float32).contiguous() for n, t in feeds.items()
        }
        batch = int(inputs[INPUT_NAME].shape[0])
        out = torch.empty((batch, self.width or 0), dtype=torch.float32, device=self.device)
        kind, index = self.device.type, self.device.index or 0
        binding = self.session.io_binding()
        for name, x in inputs.items():
            binding.bind_input(name, kind, index, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(OUTPUT_NAME, kind, index, np.float32, tuple(out.shape), out.data_ptr())
        if (
            kind == "cuda"
        ):  # torch wrote the inputs on its own stream; ONNX Runtime reads on another
            torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        return out


def host_array(tensor: Tensor) -> np.ndarray:
    """A tensor as a contiguous float32 array in host memory (what `session.run` takes)."""
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).numpy())


def engine_session_options(
    device: torch.device, threads: int | None, spinning: bool = False
) -> ort.SessionOptions:
    """Session options: errors-only logging; on CUDA one non-spinning intra-op thread (the GPU
    does the work, the CPU decodes images), else min(4, CPUs) threads unless `threads`, which
    spin-wait between operators only when `spinning` asks: ONNX Runtime's default spinning
    keeps the pool busy after every run, which on a shared host is CPU taken from the event
    loop and the decoders (server CPU per small request went from 6.6 to 4.1 ms on `mini`,
    docs/performance.md)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; ORT warns about unused initializers
    if device.type == "cuda":
        options.intra_op_num_threads = threads or 1
        spinning = False
    else:
        options.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def warm_batch_sizes(device: str, max_batch: int) -> list[int]:
    """Batch sizes to run once before serving: on CUDA the powers of two up to `max_batch`
    and `max_batch` itself (a shape's first call allocates the arena and picks kernels), on
    the CPU 1."""
    if torch.device(device).type != "cuda":
        return [1]
    sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch]
    return [*sizes, max_batch]


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
