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
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor

ONNX_FILE = "visual.onnx"
TORCHSCRIPT_FILE = "visual.torchscript.pt"
INPUT_NAME = "pixels"
OUTPUT_NAME = "embeddings"

Engine = Literal["onnx", "torchscript"]


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
    """An ONNX Runtime session over ``visual.onnx``; CUDA first when asked for and present."""

    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
        options.log_severity_level = 3  # errors only; ORT warns about every unused initializer
        self.device = torch.device(device)
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=onnx_providers(self.device)
        )

    def __call__(self, pixels: Tensor) -> Tensor:
        array = np.ascontiguousarray(pixels.detach().to("cpu", torch.float32).numpy())
        (out,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(out).to(self.device)


def onnx_providers(device: torch.device) -> list[str]:
    """Execution providers for `device`; CPU always last, as ONNX Runtime's fallback."""
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


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
    directory: Path, engine: Engine, device: str = "cpu", threads: int | None = None
) -> VisualEngine:
    """The artifact's visual graph in `directory` as a callable engine (`threads`: ONNX
    Runtime's intra-op threads, min(4, CPUs) when None)."""
    if engine == "onnx":
        return OnnxEngine(directory / ONNX_FILE, device, threads)
    if engine == "torchscript":
        return TorchScriptEngine(directory / TORCHSCRIPT_FILE, device)
    raise ValueError(f"unknown engine {engine!r}; choose 'onnx' or 'torchscript'")
