"""Engines over shared prompt graphs: the graph takes each image's classifier tensors as
inputs beside its pixels (see `models.methods.base.SharedVisual`).

One `InputEngine` serves every classifier of a method on a backbone; `BoundInputs` is one
classifier's view of it, a plain `VisualEngine` (pixels -> embeddings) that repeats its own
tensors along the batch. The batcher instead concatenates the tensors of every request in a
batch, so images of different classifiers run in one call.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from promptserve.models.engines import (
    INPUT_NAME,
    ONNX_FILE,
    TORCHSCRIPT_FILE,
    EngineKind,
    OnnxEngine,
    OnnxOptions,
    TorchScriptEngine,
)
from promptserve.models.precision import Bf16Engine, Precision, check_precision, int8_graph


class InputEngine(Protocol):
    """pixels [B, 3, S, S] and per-sample inputs {name: [B, ...]} -> embeddings [B, D]."""

    def __call__(self, pixels: Tensor, inputs: dict[str, Tensor]) -> Tensor: ...


class InputOnnxEngine:
    """A shared prompt graph in ONNX Runtime: every input bound in place, like the plain
    graph's pixels (`OnnxEngine.run`)."""

    def __init__(
        self,
        path: Path,
        names: list[str],
        device: str = "cpu",
        threads: int | None = None,
        options: OnnxOptions | None = None,
        model: Callable[[Path], bytes] | None = None,
    ) -> None:
        self.onnx = OnnxEngine(path, device, threads, options, model)
        self.names = list(names)

    def __call__(self, pixels: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        return self.onnx.run({INPUT_NAME: pixels} | {name: inputs[name] for name in self.names})


class InputTorchScriptEngine:
    def __init__(self, path: Path, names: list[str], device: str = "cpu") -> None:
        self.script = TorchScriptEngine(path, device)
        self.names = list(names)

    def __call__(self, pixels: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        device = self.script.device
        args = [inputs[name].to(device, torch.float32) for name in self.names]
        with torch.inference_mode():
            return self.script.module(pixels.to(device, torch.float32), *args)  # type: ignore[no-any-return]


class InputBf16Engine:
    """A shared prompt graph's TorchScript file under bf16 autocast (`models.precision`)."""

    def __init__(self, path: Path, names: list[str]) -> None:
        self.bf16 = Bf16Engine(path)
        self.names = list(names)

    def __call__(self, pixels: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        return self.bf16(pixels, *(inputs[name] for name in self.names))


def open_input_engine(
    directory: Path,
    names: list[str],
    engine: EngineKind,
    device: str = "cpu",
    threads: int | None = None,
    options: OnnxOptions | None = None,
    precision: Precision = "fp32",
) -> InputEngine:
    """The shared prompt graph in `directory` (inputs `names`, in order) as an engine
    (`options`: ONNX Runtime's, see `models.engines.OnnxOptions`), at `precision` (int8 is
    dynamically quantized: see `models.precision`)."""
    if precision != "fp32":
        check_precision(precision, device)
        if precision == "bf16":
            return InputBf16Engine(directory / TORCHSCRIPT_FILE, names)
        onnx = directory / ONNX_FILE
        return InputOnnxEngine(onnx, names, "cpu", threads, options, model=int8_graph)
    if engine == "onnx":
        return InputOnnxEngine(directory / ONNX_FILE, names, device, threads, options)
    if engine == "torchscript":
        return InputTorchScriptEngine(directory / TORCHSCRIPT_FILE, names, device)
    raise ValueError(f"unknown engine {engine!r}; choose 'onnx' or 'torchscript'")


def repeat_inputs(inputs: dict[str, Tensor], count: int) -> dict[str, Tensor]:
    """One classifier's tensors {name: [...]} repeated for `count` images: {name: [n, ...]}."""
    return {name: t.unsqueeze(0).expand(count, *t.shape) for name, t in inputs.items()}


class BoundInputs:
    """One classifier's view of a shared prompt graph: pixels -> embeddings."""

    def __init__(self, engine: InputEngine, inputs: dict[str, Tensor]) -> None:
        self.engine = engine
        self.inputs = inputs  # without the batch axis

    def __call__(self, pixels: Tensor) -> Tensor:
        return self.engine(pixels, repeat_inputs(self.inputs, int(pixels.shape[0])))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.inputs.values())
