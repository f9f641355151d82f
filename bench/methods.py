"""Every method on the synthetic base-to-novel protocol, with its costs (a table, not a test).

Per method: base / novel / HM top-1 (mean over seeds, the same runs as ``promptserve eval
--protocol base2novel --method M --shots 16 --seeds 1 2 3``, with the method's ``mini`` preset
when it has one), learnable parameters, training seconds per epoch, tokens per image in the
vision tower, and images/s of the exported ONNX visual graph (batch 32, CPU) relative to the
unprompted encoder.

    python bench/methods.py                         # all methods, ~20 minutes on 2 cores
    python bench/methods.py --methods coop sep --seeds 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from promptserve.models.engines import ONNX_FILE, OnnxEngine
from promptserve.models.export import export_visual_graph
from promptserve.models.methods import Learner, get_method, list_methods
from promptserve.models.preprocess import eval_transform
from promptserve.training.api import TrainRequest, fit_learner
from promptserve.training.data import ImageDataset, make_loader
from promptserve.training.loop import evaluate
from promptserve.training.progress import step_progress
from promptserve.training.protocols import ProtocolRequest, harmonic_mean, make_plan


def graph_throughput(learner: Learner, seconds: float, threads: int) -> float:
    """Images/s of the learner's exported ONNX graph on batches of 32."""
    size = learner.preprocess.size
    with tempfile.TemporaryDirectory() as scratch:
        export_visual_graph(learner.visual_graph().eval(), Path(scratch), size, tolerance=1e-4)
        engine = OnnxEngine(Path(scratch) / ONNX_FILE, "cpu", threads)
        pixels = torch.randn(32, 3, size, size)
        engine(pixels)
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            engine(pixels)
            done += 32
        return done / (time.perf_counter() - started)


def run_method(method: str, args: argparse.Namespace) -> dict[str, float | int | str]:
    preset = "mini" if "mini" in get_method(method).presets else None
    request = ProtocolRequest(
        protocol="base2novel", method=method, shots=args.shots, seeds=tuple(args.seeds)
    )
    rows, epoch_seconds = [], []
    learner: Learner | None = None
    for seed in args.seeds:
        plan = make_plan(request, seed)
        train = TrainRequest(
            method=method, data="synthetic", store=Path("."), name="bench",
            shots=args.shots, seed=seed, preset=preset,
        )  # fmt: skip
        with step_progress(f"{method} seed {seed}") as report:
            fitted = fit_learner(train, report, source=plan.train)
        learner = fitted.learner
        if fitted.result.epochs:
            epoch_seconds.append(fitted.result.seconds / fitted.result.epochs)
        transform = eval_transform(learner.preprocess)
        scores = {}
        for name, source in plan.tests:
            loader = make_loader(ImageDataset(source, transform), 128, shuffle=False, seed=0)
            scores[name] = evaluate(learner, loader, source.class_names)
        scores["hm"] = harmonic_mean(scores["base"], scores["novel"])
        rows.append(scores)
        print(f"  {method} seed {seed}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
    assert learner is not None
    learner.eval()
    described = learner.describe()
    return {
        "method": method,
        "preset": preset or "-",
        **{k: statistics.mean(r[k] for r in rows) for k in ("base", "novel", "hm")},
        "hm_std": statistics.pstdev(r["hm"] for r in rows),
        "params": int(described["learnable_parameters"]),
        "epoch_s": statistics.mean(epoch_seconds) if epoch_seconds else 0.0,
        "tokens": int(described.get("tokens_per_image", 1 + learner.vision.tower.num_patches)),
        "img_s": graph_throughput(learner, args.seconds, args.threads),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list_methods())
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput measurement")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    methods = sorted(args.methods, key=lambda m: (m != "zeroshot", m))
    results = [run_method(method, args) for method in methods]
    plain = next((r["img_s"] for r in results if r["method"] == "zeroshot"), None)

    print(
        f"\nmini backbone, base2novel, {args.shots} shots, seeds {args.seeds}, CPU x{args.threads}"
    )
    header = (
        f"{'method':<9} {'preset':<6} {'base':>6} {'novel':>6} {'HM':>6} {'±':>5} "
        f"{'params':>9} {'s/epoch':>8} {'tokens':>6} {'img/s':>7} {'rel':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        relative = f"{float(r['img_s']) / float(plain):.2f}" if plain else "-"
        print(
            f"{r['method']:<9} {r['preset']:<6} {r['base']:>6.2f} {r['novel']:>6.2f} "
            f"{r['hm']:>6.2f} {r['hm_std']:>5.2f} {r['params']:>9,} {r['epoch_s']:>8.2f} "
            f"{r['tokens']:>6} {r['img_s']:>7.1f} {relative:>5}"
        )


if __name__ == "__main__":
    main()
