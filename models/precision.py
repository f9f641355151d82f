"""Reduced-precision CPU engines over a shared visual graph: int8 and bf16 (`Precision`).

- ``int8``: the graph's ``visual.onnx`` with its MatMul and Gemm weights quantized to int8 by
  ONNX Runtime's dynamic quantization (per-channel weights, activations quantized per call),
  run by ONNX Runtime's CPU provider. Static QDQ quantization calibrated on fixed images
  (`int8_graph` with calibration pixels, `graph_calibration`) was measured against it by
  `bench/precision.py` (docs/performance.md): slower on mini and ViT-B-16, and on mini it
  failed the gate that dynamic passes, so the engines quantize dynamically. Dynamic needs no
  images, which also suits the shared prompt graphs, whose inputs differ per classifier.
- ``bf16``: the graph's ``visual.torchscript.pt`` run under PyTorch's CPU autocast to
  bfloat16 (matmuls and convolutions in bf16, norms and softmax kept float32). ONNX Runtime's
  CPU provider has no bf16 matmul kernels, so this precision always runs the TorchScript file.
  It needs bf16 instructions: the CPU must report ``avx512_bf16`` or ``amx_bf16`` in
  ``/proc/cpuinfo``; without them PyTorch emulates bf16 at a fraction of float32's speed, so
  `bf16_problem` names the missing flags and the engine refuses to open.

Neither serves a classifier unchecked: `models.precision_gate` compares it with float32 first.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
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
    VisualEngine,
    host_array,
    open_engine,
)
from promptserve.models.errors import PrecisionError

Precision = Literal["fp32", "bf16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # either gives native bf16 dot products
QUANTIZED_OPS = ["MatMul", "Gemm"]  # the transformer's weights; the patch Conv stays float32
CPUINFO = Path("/proc/cpuinfo")
CALIBRATION_IMAGES = 8  # static int8: images whose activation ranges fix the scales
BACKBONE_MANIFEST = "backbone.json"  # `models.graphs`' name (it imports this module's users)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of this CPU as Linux reports them (empty elsewhere)."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def bf16_problem() -> str | None:
    """Why this CPU cannot run the bf16 engine at speed, or None when it can."""
    flags = cpu_flags()
    if not flags:
        return f"cannot read this CPU's flags from {CPUINFO}, so bf16 support is unknown"
    if not any(flag in flags for flag in BF16_FLAGS):
        return (
            f"this CPU has none of {', '.join(BF16_FLAGS)} in {CPUINFO} "
            f"(PyTorch reports {torch.backends.cpu.get_cpu_capability()}), so bf16 would be "
            "emulated, slower than float32; use fp32 or int8"
        )
    return None


def check_precision(precision: str, device: str) -> Precision:
    """`precision` when this process can run it on `device`; PrecisionError otherwise."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if precision != "fp32" and torch.device(device).type != "cpu":
        raise PrecisionError(
            f"precision {precision} is for the CPU; on {device} use onnx_fp16 (float16)"
        )
    if precision == "bf16":
        problem = bf16_problem()
        if problem is not None:
            raise PrecisionError(f"precision bf16 cannot run here: {problem}")
    return precision  # type: ignore[return-value]


def int8_graph(path: Path, calibration: Tensor | None = None) -> bytes:
    """``visual.onnx`` at `path` with int8 weights, as model bytes: statically quantized (QDQ,
    activation ranges fitted on `calibration` pixels [N, 3, S, S]) or, without calibration,
    dynamically (activations quantized per call)."""
    import logging

    from onnxruntime import quantization as q

    # the quantizer logs a hint about its pre-processing on the root logger at WARNING
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="promptserve-int8-") as scratch:
            out = Path(scratch) / "visual.int8.onnx"
            if calibration is None:
                q.quantize_dynamic(
                    str(path),
                    str(out),
                    weight_type=q.QuantType.QInt8,
                    per_channel=True,
                    # 7-bit weights: on x86 CPUs without VNNI (AVX2 alone) the u8 x s8 kernels
                    # add pairs of products in 16 bits, which saturate at 8-bit weights (on mini
                    # the gate's top-1 agreement fell to 0.875); VNNI CPUs lose nothing by it
                    reduce_range=True,
                    op_types_to_quantize=QUANTIZED_OPS,
                )
            else:
                q.quantize_static(
                    str(path),
                    str(out),
                    PixelReader(calibration),
                    quant_format=q.QuantFormat.QDQ,
                    activation_type=q.QuantType.QUInt8,
                    weight_type=q.QuantType.QInt8,
                    op_types_to_quantize=QUANTIZED_OPS,
                )
            return out.read_bytes()
    finally:
        root.setLevel(level)


class PixelReader:
    """ONNX Runtime's calibration reader over pixels [N, 3, S, S], one image per feed."""

    def __init__(self, pixels: Tensor) -> None:
        self.feeds = iter([{INPUT_NAME: host_array(p[None])} for p in pixels])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


class Bf16Engine:
    """A TorchScript visual graph under CPU autocast to bfloat16; outputs float32."""

    def __init__(self, path: Path) -> None:
        self.script = TorchScriptEngine(path, "cpu")
        self.device = self.script.device

    def __call__(self, pixels: Tensor, *inputs: Tensor) -> Tensor:
        args = [x.to(self.device, torch.float32) for x in (pixels, *inputs)]
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = self.script.module(*args)
        return out.float()  # type: ignore[no-any-return]


def open_reduced_engine(
    directory: Path,
    precision: Precision,
    threads: int | None = None,
    options: OnnxOptions | None = None,
    calibration: Tensor | None = None,
) -> OnnxEngine | Bf16Engine:
    """The graph in `directory` at a reduced `precision` on the CPU (see the module doc);
    `calibration`: pixels for int8's static quantization (None, the engines' choice: dynamic)."""
    if precision == "int8":
        return OnnxEngine(
            directory / ONNX_FILE,
            "cpu",
            threads,
            options,
            model=lambda path: int8_graph(path, calibration),
        )
    if precision == "bf16":
        check_precision("bf16", "cpu")  # PyTorch's own intra-op threads apply, not `threads`
        return Bf16Engine(directory / TORCHSCRIPT_FILE)
    raise PrecisionError(f"precision {precision!r} is not a reduced precision")


def precision_engine(
    directory: Path,
    engine: EngineKind,
    precision: Precision,
    device: str = "cpu",
    threads: int | None = None,
    options: OnnxOptions | None = None,
) -> VisualEngine:
    """The plain graph in `directory` as `open_engine` opens it, or at `precision`."""
    if precision == "fp32":
        return open_engine(directory, engine, device, threads, options)
    check_precision(precision, device)
    return open_reduced_engine(directory, precision, threads, options)


def graph_calibration(directory: Path) -> Tensor:
    """Static int8 calibration pixels (what `bench/precision.py` compares dynamic
    quantization with) for a shared graph in `directory`: CALIBRATION_IMAGES of
    the fixed set (`models.precision_gate`, its calibration seed), preprocessed as its
    backbone's record (``<backbone>/backbone.json``) says."""
    from promptserve.models.backbone import PreprocessConfig
    from promptserve.models.precision_gate import CALIBRATION_SEED, calibration_pixels
    from promptserve.models.preprocess import FastEvalTransform

    record = json.loads((directory.parent.parent / BACKBONE_MANIFEST).read_text("utf-8"))
    cfg = dict(record["preprocessing"])
    preprocess = PreprocessConfig(**{**cfg, "mean": tuple(cfg["mean"]), "std": tuple(cfg["std"])})
    transform = FastEvalTransform(preprocess)
    return calibration_pixels(transform, preprocess.size, CALIBRATION_IMAGES, CALIBRATION_SEED)
