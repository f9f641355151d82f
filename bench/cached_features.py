"""Tuning from cached features: a coop job's training time with and without the cache, and the
quick suite's accuracy both ways (a benchmark, not a test).

Timing: coop on 10 classes x 16 shots of the synthetic world, each backbone's own recipe (the
`mini` preset on `mini`, the config defaults, CoOp's ViT-B/16 recipe of 50 epochs, elsewhere),
`feature_views=0` (the default: a fresh augmentation every epoch, the papers' way) against
`--views` cached views (8 unless told).
What is timed is the job's training stage (`FitResult.seconds`: encoding plus epochs); data
loading, the backbone, scoring and export are the same both ways. `--epochs N` shortens the
recipe; the report then also projects the full recipe from the measured seconds per uncached
epoch, per cached view encoded and per cached epoch (both paths are linear in those).

Accuracy: base-to-novel on the quick suite's data sets (`bench/suite.py --quick`: Hue25, Sepia,
Synonyms, seed 1; `--sets`, `--seeds` choose others) for coop and pre with their `mini`
presets, uncached and cached.

    python bench/cached_features.py --backbones mini --suite        # a few minutes
    python bench/cached_features.py --backbones ViT-B-16 --epochs 1  # random weights, ~5 min
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite import QUICK, SUITE, make_root  # noqa: E402

from promptserve.models.methods import get_method  # noqa: E402
from promptserve.training.api import TrainRequest, fit_learner  # noqa: E402
from promptserve.training.data import open_dataset, restrict_classes  # noqa: E402
from promptserve.training.protocols import ProtocolRequest, run_protocol  # noqa: E402
from promptserve.training.recipe import config_for  # noqa: E402

CLASSES, SHOTS = 10, 16
QUICK_SETS = ("Hue25", "Sepia", "Synonyms")
SUITE_NAMES = [s.name for s in SUITE]


def training_images() -> Any:
    world = open_dataset(f"synthetic:color-shape?n={SHOTS}&seed=1")
    return restrict_classes(world, world.class_names[:CLASSES])


def coop_run(backbone: str, views: int, epochs: int | None) -> dict[str, Any]:
    """One coop job's training stage; `views` 0 is the uncached path."""
    source = training_images()
    request = TrainRequest(
        method="coop", data="synthetic:color-shape", store=Path("."), name="bench",
        backbone=backbone, seed=1, epochs=epochs, overrides={"feature_views": views},
    )  # fmt: skip
    fitted = fit_learner(request, source=source)
    result, cache = fitted.result, fitted.result.feature_cache or {}
    return {
        "views": cache.get("views", 0),
        "epochs": result.epochs,
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
        "encode_seconds": cache.get("encode_seconds", 0.0),
        "cache_bytes": cache.get("bytes", 0),
        "final_loss": result.final_loss,
    }


def timing(backbone: str, epochs: int | None, cached_views: int) -> dict[str, Any]:
    source = training_images()
    recipe = config_for(
        TrainRequest(method="coop", data="x", store=Path("."), name="x", backbone=backbone),
        source,
    )
    before = coop_run(backbone, 0, epochs)
    after = coop_run(backbone, cached_views, epochs)
    row: dict[str, Any] = {
        "backbone": backbone,
        "recipe_epochs": recipe.epochs,
        "batch_size": recipe.batch_size,
        "views": cached_views,
        "before": before,
        "after": after,
        "speedup": round(before["seconds"] / after["seconds"], 2),
    }
    if after["epochs"] < recipe.epochs:
        views = sorted({1, 4, cached_views})
        row["projected"] = {v: project(before, after, recipe.epochs, v) for v in views}
    return row


def project(
    before: dict[str, Any], after: dict[str, Any], epochs: int, views: int
) -> dict[str, float]:
    """The full recipe's seconds at `views` from the shortened runs' per-epoch and per-view
    costs."""
    per_epoch = before["seconds"] / before["epochs"]
    per_view = after["encode_seconds"] / after["views"]
    per_cached_epoch = (after["seconds"] - after["encode_seconds"]) / after["epochs"]
    uncached = per_epoch * epochs
    cached = per_view * min(views, epochs) + per_cached_epoch * epochs
    return {
        "before_seconds": round(uncached),
        "after_seconds": round(cached),
        "speedup": round(uncached / cached, 2),
    }


def suite_accuracy(
    methods: list[str], names: list[str], seeds: tuple[int, ...], work: Path, views: int
) -> dict[str, Any]:
    """Quick-suite base / novel / HM per method, uncached and cached (`views` views)."""
    sets = [s for s in SUITE if s.name in names]
    out: dict[str, Any] = {}
    for method in methods:
        preset = "mini" if "mini" in get_method(method).presets else None
        for label, views_now in (("before", 0), ("after", views)):
            overrides = {"feature_views": views_now}
            rows = []
            for dataset in sets:
                request = ProtocolRequest(
                    protocol="base2novel", method=method, shots=16, seeds=seeds,
                    data=str(make_root(dataset, QUICK, work)), preset=preset,
                    overrides=overrides,
                )  # fmt: skip
                report = run_protocol(request)
                rows.append({k: report[k] for k in ("base", "novel", "hm", "per_seed")})
                print(f"{method} {label} {dataset.name}: {rows[-1]}", flush=True)
            keys = ("base", "novel", "hm")
            mean = {k: round(statistics.fmean(r[k] for r in rows), 2) for k in keys}
            out.setdefault(method, {})[label] = {"mean": mean, "per_set": rows}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="*", default=["mini"])
    parser.add_argument("--epochs", type=int, default=None, help="shorten the recipe")
    parser.add_argument("--suite", action="store_true", help="also the quick suite's accuracy")
    parser.add_argument("--methods", nargs="+", default=["coop", "pre"])
    parser.add_argument("--sets", nargs="+", default=list(QUICK_SETS), choices=SUITE_NAMES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--views", type=int, default=8, help="cached views per image")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("bench-out/suite-data"))
    parser.add_argument("--out", type=Path, default=Path("bench-out/cached_features.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"threads": args.threads, "timing": []}
    for backbone in args.backbones:
        row = timing(backbone, args.epochs, args.views)
        report["timing"].append(row)
        print(json.dumps(row), flush=True)
    if args.suite:
        seeds = tuple(args.seeds)
        report["suite"] = suite_accuracy(args.methods, args.sets, seeds, args.work, args.views)
        print(json.dumps(report["suite"], indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
