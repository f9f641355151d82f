"""The papers' protocols on the CoOp data sets with the papers' ViT-B/16 recipes (needs a GPU).

Base-to-novel for the chosen methods and data sets (16 shots of the base half, base and novel
test accuracy, HM), printed beside the papers' averages from METHODS.md; then cross-data-set
transfer and domain generalisation from one ImageNet model per method and seed (all 1000
classes, 16 shots; tested on the other 10 data sets and on ImageNetV2, -Sketch, -A, -R). The
data root holds the data sets in CoOp's DATASETS.md layout (see the README).

    python bench/reproduce.py --data-root $DATA --device cuda                # everything
    python bench/reproduce.py --data-root $DATA --methods coop provp --datasets DTD EuroSAT
    python bench/reproduce.py --data-root $DATA --dry-run                    # the plan only

``--dry-run`` reads every data set and prints what each run would train on (classes, base and
novel names, images, steps), its template and recipe, without loading a backbone.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from promptserve.models.methods import get_method, list_methods
from promptserve.training.benchmarks import BASE_TO_NOVEL, VARIANTS, benchmark_path, get_benchmark
from promptserve.training.protocols import ProtocolRequest, harmonic_mean, make_plan, run_protocol
from promptserve.training.recipe import recipe_of, resolve_config, template_of
from promptserve.training.templates import method_template

BACKBONE = "ViT-B-16:openai"
PROTOCOLS = ("base2novel", "transfer")  # transfer: cross-data-set and domain generalisation
# METHODS.md's base-to-novel averages over the 11 data sets (base, novel, HM); None: not given
ANCHORS: dict[str, tuple[float | None, float | None, float]] = {
    "zeroshot": (69.34, 74.22, 71.70),
    "coop": (82.69, 63.22, 71.66),
    "provp": (85.20, 73.22, 78.76),
    "pmpo": (None, None, 79.28),
    "pre": (82.14, 71.88, 76.27),  # its repository's 8 data sets, not the usual 11
}
# the papers' recipe per method: (preset for base-to-novel, preset on ImageNet-scale label sets,
# preset for the ImageNet model of the transfer protocols); None keeps the config defaults
RECIPES: dict[str, tuple[str | None, str | None, str | None]] = {
    "coop": ("cocoop_base2novel", "cocoop_base2novel_imagenet", "cocoop_base2novel_imagenet"),
    "provp": ("base2novel", "base2novel", "base2novel"),
    "sep": (None, "imagenet", "cross_dataset"),
    "pre": ("vit_b16_ep50_ctxv1", "vit_b16_ep50_ctxv1", "vit_b16_ep50_ctxv1"),
    "pmpo": ("maple_vit_b16_ep5_batch4",) * 3,  # type: ignore[dict-item]
}
LARGE = ("ImageNet", "SUN397")  # SEP's recipe for large label sets (10 epochs, batch 128)


def preset_for(method: str, protocol: str, dataset: str) -> str | None:
    recipe = RECIPES.get(method)
    if recipe is None:
        return None
    preset = recipe[2] if protocol == "transfer" else recipe[1 if dataset in LARGE else 0]
    if preset is not None and preset not in get_method(method).presets:
        raise SystemExit(f"{method} has no preset {preset!r}")
    return preset


def request_for(args: argparse.Namespace, method: str, protocol: str, dataset: str) -> Any:
    root: Path = args.data_root
    if protocol == "base2novel":
        return ProtocolRequest(
            protocol="base2novel", method=method, shots=args.shots, seeds=tuple(args.seeds),
            backbone=args.backbone, data=str(benchmark_path(dataset, root)),
            preset=preset_for(method, protocol, dataset), device=args.device,
            workers=args.workers,
        )  # fmt: skip
    targets = [str(benchmark_path(t, root)) for t in args.targets]
    return ProtocolRequest(
        protocol="cross", method=method, shots=args.shots, seeds=tuple(args.seeds),
        backbone=args.backbone, data=str(benchmark_path("ImageNet", root)),
        targets=tuple(targets), preset=preset_for(method, protocol, "ImageNet"),
        device=args.device, workers=args.workers,
    )  # fmt: skip


def runs(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(protocol, method, data set) in the order they run."""
    planned = []
    if "base2novel" in args.protocols:
        planned += [("base2novel", m, d) for m in args.methods for d in args.datasets]
    if "transfer" in args.protocols:
        planned += [("transfer", m, "ImageNet") for m in args.methods]
    return planned


def describe_plan(args: argparse.Namespace, protocol: str, method: str, dataset: str) -> str:
    """What one run would do, read from the data without a backbone."""
    request = request_for(args, method, protocol, dataset)
    plan = make_plan(request, seed=args.seeds[0])
    config = resolve_config(method, plan.train, {}, request.preset)
    images = len(plan.train)  # a plan on real data holds the few-shot draw
    batch = config.batch_size
    full = config.drop_last and images >= batch
    steps = (images // batch if full else math.ceil(images / batch)) * config.epochs
    if method == "zeroshot":
        steps = 0
    lines = [
        f"{protocol} · {method} · {dataset} · preset {request.preset or '-'}",
        f"  train: {len(plan.train.class_names)} classes, {images} images "
        f"({args.shots} shots), {steps} steps x {len(args.seeds)} seeds",
        f"  template: {template_of(config)}",
        f"  recipe: {json.dumps(recipe_of(config)) if steps else '- (nothing is trained)'}",
    ]
    for name, source in plan.tests:
        scored_with = method_template(method, source.dataset, source.template)
        shown = ", ".join(source.class_names[:4]) + (", ..." if len(source.class_names) > 4 else "")
        lines.append(f"  test {name}: {len(source.class_names)} classes [{shown}], "
                     f"{len(source)} images, template {scored_with!r}")  # fmt: skip
    return "\n".join(lines)


def base2novel_table(reports: dict[tuple[str, str], dict[str, Any]], args: Any) -> str:
    lines = []
    for method in args.methods:
        rows = [(d, reports[(method, d)]) for d in args.datasets if (method, d) in reports]
        if not rows:
            continue
        lines.append(f"\nbase-to-novel · {method} · {args.backbone} · {args.shots} shots")
        lines.append(f"{'data set':<20} {'base':>6} {'novel':>6} {'HM':>6}")
        lines += [f"{d:<20} {r['base']:>6.2f} {r['novel']:>6.2f} {r['hm']:>6.2f}" for d, r in rows]
        base = statistics.fmean(r["base"] for _, r in rows)
        novel = statistics.fmean(r["novel"] for _, r in rows)
        lines.append(
            f"{'average':<20} {base:>6.2f} {novel:>6.2f} {harmonic_mean(base, novel):>6.2f}"
        )
        anchor = ANCHORS.get(method)
        cells = ["-" if v is None else f"{v:.2f}" for v in anchor] if anchor else ["-"] * 3
        lines.append(f"{'paper (METHODS.md)':<20} {cells[0]:>6} {cells[1]:>6} {cells[2]:>6}")
        if len(rows) < len(BASE_TO_NOVEL):
            lines.append(f"  (average over {len(rows)} of the 11 data sets)")
    return "\n".join(lines)


def transfer_table(reports: dict[str, dict[str, Any]]) -> str:
    lines = []
    for method, report in reports.items():
        targets = [k for k in report["std"] if k != "source"]
        cross = [t for t in targets if t not in VARIANTS]
        domain = [t for t in targets if t in VARIANTS]
        lines.append(f"\ntransfer · {method} · trained on ImageNet (source {report['source']:.2f})")
        for group, names in (("cross-data-set", cross), ("domain generalisation", domain)):
            if names:
                cells = ", ".join(f"{n} {report[n]:.2f}" for n in names)
                mean = statistics.fmean(report[n] for n in names)
                lines.append(f"  {group}: {cells}; average {mean:.2f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )  # fmt: skip
    parser.add_argument("--data-root", type=Path, required=True, help="CoOp's $DATA folder")
    parser.add_argument("--methods", nargs="+", default=list_methods(), choices=list_methods())
    parser.add_argument(
        "--datasets", nargs="+", default=list(BASE_TO_NOVEL), help="base-to-novel data sets"
    )
    parser.add_argument(
        "--targets",
        nargs="+",
        default=[*BASE_TO_NOVEL[1:], *VARIANTS],
        help="transfer test sets (default: the other 10 and the 4 variants)",
    )
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--backbone", default=BACKBONE)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workers", type=int, default=8, help="data-loader processes")
    parser.add_argument("--out", type=Path, default=None, help="write each run's JSON report here")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; train nothing")
    args = parser.parse_args(argv)
    args.datasets = [get_benchmark(d).name for d in args.datasets]
    args.targets = [get_benchmark(t).name for t in args.targets]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    planned = runs(args)
    if args.dry_run:
        for protocol, method, dataset in planned:
            print(describe_plan(args, protocol, method, dataset))
        print(f"\n{len(planned)} runs x {len(args.seeds)} seeds planned; nothing trained")
        return 0
    base2novel: dict[tuple[str, str], dict[str, Any]] = {}
    transfer: dict[str, dict[str, Any]] = {}
    for protocol, method, dataset in planned:
        print(f"== {protocol} · {method} · {dataset}", file=sys.stderr, flush=True)
        request = request_for(args, method, protocol, dataset)
        report = run_protocol(request, progress=lambda line: print("  " + line, file=sys.stderr))
        if protocol == "base2novel":
            base2novel[(method, dataset)] = report
        else:
            transfer[method] = report
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{protocol}-{method}-{dataset}.json").write_text(
                json.dumps(report, indent=2)
            )
    print(base2novel_table(base2novel, args))
    print(transfer_table(transfer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
