"""Engine precision: raw visual-engine img/s of each precision against today's float32 ONNX
engine, with the accuracy gate's figures (not a test; prints a table).

For each backbone (default the committed ``mini`` and ``ViT-B-16`` with seeded random weights,
open_clip's architecture, no download) it publishes a 10-class zero-shot classifier into a
scratch store (format 2: the backbone's shared plain graph) and, for each engine,

  (a) opens it as the service does (`load_classifier` through one `EnginePool`, the gate run
      on the fixed calibration set), with the seconds that took (quantization included);
  (b) measures raw img/s: `Classifier.embed` on random pixels [batch, 3, S, S];
  (c) reports the gate's top-1 agreement and minimum embedding cosine against float32.

Engines: ``fp32`` (ONNX Runtime, today's engine), ``int8`` (dynamic quantization, what the
service serves), ``int8-static`` (QDQ calibrated on 8 fixed images, the alternative it was
chosen over; run through the same gate) and ``bf16`` (TorchScript under bf16 autocast, where
the CPU has bf16 instructions).

    python bench/precision.py                             # both backbones, ~5 minutes on 2 cores
    python bench/precision.py --backbones mini --seconds 5
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from promptserve.models.artifact import publish_classifier
from promptserve.models.backbone import load_backbone
from promptserve.models.classifier import Classifier, load_classifier
from promptserve.models.engine_pool import EnginePool
from promptserve.models.engines import VisualEngine
from promptserve.models.graphs import GraphRef, graph_dir
from promptserve.models.precision import bf16_problem, graph_calibration, open_reduced_engine
from promptserve.models.precision_gate import (
    GateResult,
    GateThresholds,
    calibration_pixels,
    run_gate,
)
from promptserve.models.preprocess import FastEvalTransform

ENGINES = ("fp32", "int8", "int8-static", "bf16")


def publish(store: Path, backbone: str) -> Path:
    """The 10-class zero-shot classifier of `backbone` in `store` (published once)."""
    name = backbone.lower().replace("-", "")
    version = store / name / "1"
    if not version.is_dir():
        learner = create_zeroshot(backbone)
        publish_classifier(learner, [f"class {i}" for i in range(10)], store, name)
    return version


def create_zeroshot(backbone: str):  # type: ignore[no-untyped-def]
    from promptserve.models.methods import create_method

    return create_method("zeroshot", load_backbone(backbone))


def rate(engine: VisualEngine, size: int, batch: int, seconds: float) -> float:
    pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    engine(pixels)  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        engine(pixels)
        done += batch
    return done / (time.perf_counter() - started)


def static_int8(
    version: Path, full: Classifier, gate: GateThresholds, threads: int
) -> tuple[VisualEngine, GateResult]:
    """The statically quantized graph, gated like the served engines."""
    directory = graph_dir(version.parent.parent, GraphRef.from_json(full.manifest["graph"]))
    calibration = graph_calibration(directory)
    engine = open_reduced_engine(directory, "int8", threads, calibration=calibration)
    size = full.preprocess.size
    pixels = calibration_pixels(FastEvalTransform(full.preprocess), size, gate.images)
    result = run_gate("int8", engine, full.engine, full.class_embeddings, pixels, gate)
    return engine, result


def measure(version: Path, args: argparse.Namespace) -> list[tuple[str, float, float, str, str]]:
    """(engine, open seconds, img/s, agreement, min cosine) per engine."""
    pool = EnginePool(threads=args.threads)
    gate = GateThresholds(images=args.gate_images)
    rows = []
    full: Classifier | None = None
    for kind in args.engines:
        if kind == "bf16" and bf16_problem() is not None:
            print(f"  bf16 skipped: {bf16_problem()}")
            continue
        started = time.perf_counter()
        result: GateResult | None
        if kind == "int8-static":
            assert full is not None, "fp32 runs first"
            engine, result = static_int8(version, full, gate, args.threads)
        else:
            opened = load_classifier(version, engines=pool, precision=kind, gate=gate)  # type: ignore[arg-type]
            engine, result = opened.engine, opened.precision_gate
            full = opened if kind == "fp32" else full
        opening = time.perf_counter() - started
        assert full is not None
        served = rate(engine, full.preprocess.size, args.batch, args.seconds)
        agreement = "1" if result is None else f"{result.agreement:.3f}"
        cosine = "1" if result is None else f"{result.min_cosine:.5f}"
        if result is not None and not result.passed:  # the service would serve fp32
            cosine += " (fails the gate)" if kind == "int8-static" else " (failed: fp32 served)"
        rows.append((kind, opening, served, agreement, cosine))
        print(f"  {kind}: open {opening:.1f} s, {served:.2f} img/s, {agreement} / {cosine}")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["mini", "ViT-B-16"])
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15.0, help="per engine")
    parser.add_argument("--gate-images", type=int, default=32)
    parser.add_argument("--store", type=Path, help="scratch store to reuse (default: a temp one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # bf16 runs on PyTorch's threads
    if args.engines[0] != "fp32":
        parser.error("--engines must start with fp32 (the reference)")
    with tempfile.TemporaryDirectory(prefix="promptserve-precision-") as scratch:
        store = args.store or Path(scratch)
        table: list[str] = []
        for backbone in args.backbones:
            print(f"{backbone}:", flush=True)
            rows = measure(publish(store, backbone), args)
            base = rows[0][2]
            for kind, opening, served, agreement, cosine in rows:
                table.append(
                    f"| {backbone} | {kind} | {served:.2f} | {served / base:.2f}x | "
                    f"{agreement} | {cosine} | {opening:.1f} |"
                )
    print(f"\nbatch {args.batch}, {args.threads} threads, {args.seconds:.0f} s per engine")
    print("| backbone | engine | img/s | vs fp32 | top-1 agreement | min cosine | open s |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(table))


if __name__ == "__main__":
    main()
