"""Names the backbone cannot read: zero-shot, coop, coop with class-specific context (csc) and the
linear probe on a task whose class names are catalogue codes (not a test; prints a table).

Every run trains on K shots of the task's train split and is scored on its validation split
(what the `mini` presets were chosen on) and its test split (reported, never chosen on).

    python bench/class_specific.py                          # the mini presets, seed 1
    python bench/class_specific.py --task 'synthetic:color-shape?names=catalogue&classes=16' \
        --set feature_views=1                               # the table in docs/methods/index.md
    python bench/class_specific.py --only coop-csc --set lr=0.03 --seeds 1 2 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from promptserve.models.methods import parse_overrides
from promptserve.models.preprocess import eval_transform
from promptserve.training.api import TrainRequest, fit_learner
from promptserve.training.data import ImageDataset, make_loader, open_dataset
from promptserve.training.loop import evaluate
from promptserve.training.recipe import default_preset

TASK = "synthetic:color-shape?names=catalogue"
EVAL_IMAGES_PER_CLASS = 8  # 64 classes -> 512 validation and 512 test images; 16 -> 128
# (label, method, preset) of each row; None: the method's `mini` preset, if it has one
RUNS: tuple[tuple[str, str, str | None], ...] = (
    ("zeroshot", "zeroshot", None),
    ("coop", "coop", None),
    ("coop-csc", "coop", "mini_csc"),
    ("linear_probe", "linear_probe", None),
)


def run_one(
    method: str, preset: str | None, overrides: dict[str, Any], task: str, shots: int, seed: int
) -> dict[str, float]:
    """Train on `shots` per class of `task`'s train split; accuracy on its val and test splits."""
    train = open_dataset(f"{task}&n={shots}&seed={seed}", split="train")
    preset = preset or default_preset(method, "mini")
    request = TrainRequest(
        method=method, data=task, store=Path("unused"), name=method, backbone="mini",
        shots=shots, seed=seed, overrides=overrides, preset=preset,
    )  # fmt: skip
    started = time.perf_counter()
    fitted = fit_learner(request, source=train)
    scores = {"train_s": round(time.perf_counter() - started, 1)}
    transform = eval_transform(fitted.learner.preprocess)
    for split in ("val", "test"):
        source = open_dataset(f"{task}&n={EVAL_IMAGES_PER_CLASS}&seed=0", split=split)
        loader = make_loader(ImageDataset(source, transform), 256, shuffle=False, seed=0)
        scores[split] = round(evaluate(fitted.learner, loader, list(source.class_names)), 2)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default=TASK)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--only", nargs="+", help="labels of the rows to run")
    parser.add_argument("--set", action="append", default=[], help="field=value for those rows")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    extra = parse_overrides(args.set)
    rows = [r for r in RUNS if args.only is None or r[0] in args.only]
    results: dict[str, list[dict[str, float]]] = {}
    print(f"{args.task}, {args.shots} shots, mini presets {extra or ''}; top-1 %")
    print(f"{'method':<14} {'seed':>4} {'val':>6} {'test':>6} {'train s':>8}")
    for label, method, preset in rows:
        for seed in args.seeds:
            scores = run_one(method, preset, extra, args.task, args.shots, seed)
            results.setdefault(label, []).append(scores)
            print(
                f"{label:<14} {seed:>4} {scores['val']:>6.1f} {scores['test']:>6.1f} "
                f"{scores['train_s']:>8.1f}",
                flush=True,
            )
    if args.json is not None:
        report = {"task": args.task, "shots": args.shots, "seeds": args.seeds, "runs": results}
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
