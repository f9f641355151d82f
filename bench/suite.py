"""The downstream suite: shifted synthetic data sets the mini backbone has not mastered, and every
method measured on them (a benchmark, not a test).

Each data set is a ``synthetic:`` spec written as a CoOp/Dassl root with ``make-dataset``'s code,
so the methods read it exactly as they read real benchmark data. Per data set: zero-shot and a
16-shot linear probe on the frozen image features (the headroom), then base-to-novel for every
registered method with its ``mini`` preset, 16 shots, seeds 1 2 3, final weights. Writes
``suite.json``, ``suite.md`` (per data set and the average: base, novel, HM, with std over seeds)
and ``suite.png`` (the averages) under ``--out``.

    python bench/suite.py                      # the full suite (see the README for its time)
    python bench/suite.py --quick              # 3 data sets, seed 1: a few minutes
    python bench/suite.py --methods coop provp --datasets Hue25 Sepia --seeds 1
    python bench/suite.py --suite paper        # the papers' regime (bench/paper_suite.py)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from suite_report import average, chart, markdown
from torch import Tensor

from promptserve.models.backbone import load_backbone
from promptserve.models.methods import Learner, create_method, get_method, list_methods
from promptserve.models.preprocess import eval_transform
from promptserve.training.data import (
    ImageDataset,
    make_loader,
    open_dataset,
    restrict_classes,
    sample_few_shot,
    split_base_novel,
)
from promptserve.training.dataset_writer import write_dassl_root
from promptserve.training.protocols import ProtocolRequest, harmonic_mean, run_protocol


@dataclass(frozen=True)
class SuiteSet:
    name: str
    options: str  # the spec's shift / names options
    what: str  # one line for the README


SUITE = (  # ordered by the zero-shot-vs-probe gap measured on them, small to large
    SuiteSet("Desat", "shift=desat75", "three quarters of the saturation removed"),
    SuiteSet("LowRes", "shift=lowres12", "12 x 12 pixels, blown back up"),
    SuiteSet("Hue25", "shift=hue25", "every hue rotated by 25 degrees"),
    SuiteSet("Sepia", "shift=sepia70", "a 70 % sepia tint"),
    SuiteSet("Clutter", "shift=clutter8+noise20", "8 distractor blobs and pixel noise"),
    SuiteSet("Hue50", "shift=hue50", "every hue rotated by 50 degrees"),
    SuiteSet("Synonyms", "names=synonym", "unshifted images, names mini never read"),
    SuiteSet("Invert", "shift=invert", "the negative image"),
)
NO_HEADROOM = SuiteSet("Unshifted", "", "the pretraining world itself")


@dataclass(frozen=True)
class Row:
    """One row of the tables: a method with its mini preset and what the run overrides."""

    label: str
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sizing:
    classes: int  # colour-shape classes per data set (half base, half novel)
    train: int  # images per class in the train split (>= shots)
    val: int
    test: int


FULL = Sizing(classes=16, train=16, val=2, test=24)
QUICK = Sizing(classes=16, train=16, val=2, test=8)


def spec_of(dataset: SuiteSet, sizing: Sizing) -> str:
    options = "&".join(o for o in (dataset.options, f"classes={sizing.classes}", "seed=7") if o)
    return f"synthetic:color-shape?{options}"


def make_root(dataset: SuiteSet, sizing: Sizing, work: Path) -> Path:
    """The data set as a CoOp/Dassl root under `work` (reused when it is already there)."""
    root = work / f"{dataset.name}-c{sizing.classes}-{sizing.train}-{sizing.val}-{sizing.test}"
    if not root.exists():
        counts = {"train": sizing.train, "val": sizing.val, "test": sizing.test}
        write_dassl_root(spec_of(dataset, sizing), root, name=dataset.name, counts=counts)
    return root


def embed(learner: Learner, root: Path, split: str, names: list[str], shots: int | None) -> Any:
    source = restrict_classes(open_dataset(str(root), split=split), names)
    if shots is not None:
        source = sample_few_shot(source, shots, seed=1, quiet=True)
    dataset = ImageDataset(source, eval_transform(learner.preprocess), names)
    xs, ys = [], []
    with torch.no_grad():
        for pixels, labels in make_loader(dataset, 256, shuffle=False, seed=0):
            xs.append(learner.encode_images(pixels))
            ys.append(labels)
    return torch.cat(xs), torch.cat(ys)


def linear_probe(x: Tensor, y: Tensor, classes: int, steps: int = 500) -> torch.nn.Linear:
    torch.manual_seed(0)
    probe = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        loss = F.cross_entropy(probe(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe


def headroom(root: Path, shots: int) -> dict[str, float]:
    """Zero-shot base / novel / HM and a `shots`-shot linear probe on the base classes."""
    zeroshot = create_method("zeroshot", load_backbone("mini"))
    base, novel = split_base_novel(open_dataset(str(root), split="train").class_names)
    scores: dict[str, float] = {}
    for part, names in (("base", base), ("novel", novel)):
        x, y = embed(zeroshot, root, "test", names, None)
        with torch.no_grad():
            logits = x @ zeroshot.encode_classes(names).t()
        scores[part] = 100.0 * logits.argmax(1).eq(y).float().mean().item()
    x_train, y_train = embed(zeroshot, root, "train", base, shots)
    x_test, y_test = embed(zeroshot, root, "test", base, None)
    probe = linear_probe(x_train, y_train, len(base))
    with torch.no_grad():
        scores["probe"] = 100.0 * probe(x_test).argmax(1).eq(y_test).float().mean().item()
    scores["hm"] = harmonic_mean(scores["base"], scores["novel"])
    return scores


class Clock:
    """Progress lines with elapsed time and an estimate of what is left."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.started = total, 0, time.perf_counter()

    def step(self, what: str, units: int = 1) -> None:
        self.done += units
        elapsed = time.perf_counter() - self.started
        left = elapsed / max(self.done, 1) * (self.total - self.done)
        stamp = f"[{self.done:>4}/{self.total}] {elapsed / 60:5.1f} min, ~{left / 60:4.1f} left"
        print(f"{stamp}: {what}", file=sys.stderr, flush=True)


def method_cost(method: str) -> int:
    """Rough relative cost of one training run, for the progress estimate."""
    return {"coop": 2, "pre": 2, "provp": 3, "dcp": 3, "sep": 4, "pmpo": 3}.get(method, 3)


def run_suite(
    args: argparse.Namespace, sizing: Sizing, datasets: list[SuiteSet], rows: list[Row]
) -> dict[str, Any]:
    per_set = 1 + sum(method_cost(row.method) * len(args.seeds) for row in rows)
    clock = Clock(len(datasets) * per_set)
    results: dict[str, Any] = {}
    for dataset in datasets:
        root = make_root(dataset, sizing, args.work)
        zero = headroom(root, args.shots)
        scores: dict[str, Any] = {
            "zeroshot": {k: round(v, 2) for k, v in zero.items() if k != "probe"}
        }
        scores["zeroshot"]["std"] = {"base": 0.0, "novel": 0.0, "hm": 0.0}
        results[dataset.name] = {"spec": spec_of(dataset, sizing), "probe": zero["probe"]}
        clock.step(
            f"{dataset.name}: zero-shot base {zero['base']:.1f} novel {zero['novel']:.1f}, "
            f"{args.shots}-shot probe {zero['probe']:.1f}"
        )
        for row in rows:
            preset = "mini" if "mini" in get_method(row.method).presets else None
            request = ProtocolRequest(
                protocol="base2novel", method=row.method, shots=args.shots,
                seeds=tuple(args.seeds), data=str(root), preset=preset, overrides=row.overrides,
            )  # fmt: skip
            cost = method_cost(row.method)
            label = f"{dataset.name} {row.label}"
            report = run_protocol(
                request, lambda line, label=label, cost=cost: clock.step(f"{label} {line}", cost)
            )
            scores[row.label] = {k: report[k] for k in ("base", "novel", "hm", "std", "per_seed")}
            scores[row.label]["recipe"] = report["recipe"]
        results[dataset.name]["methods"] = scores
        args.out.mkdir(parents=True, exist_ok=True)  # what is done survives an interrupted run
        (args.out / f"{args.suite}-partial.json").write_text(json.dumps(results, indent=2))
    return results


def write_strips(directory: Path, sizing: Sizing, sets: list[SuiteSet], per_strip: int = 8) -> None:
    """One PNG per data set: `per_strip` test images of different classes, side by side."""
    from PIL import Image

    from promptserve.training.synthetic.tasks import build_task

    directory.mkdir(parents=True, exist_ok=True)
    for dataset in sets:
        task = build_task(f"{spec_of(dataset, sizing)}&n=1", "test")
        step = max(1, len(task.images) // per_strip)
        images = task.images[::step][:per_strip]
        side = images[0].size[0]
        strip = Image.new("RGB", (side * len(images), side), "white")
        for i, image in enumerate(images):
            strip.paste(image, (i * side, 0))
        strip.save(directory / f"{dataset.name.lower()}.png", optimize=True)
        names = ", ".join(task.classnames[::step][:per_strip])
        print(f"{dataset.name}: {names}")


def main() -> None:
    import paper_suite  # imports this module for SuiteSet and Row

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    every = [*SUITE, NO_HEADROOM, *paper_suite.PAPER_SETS]
    parser.add_argument("--suite", choices=("suite", "paper"), default="suite")
    parser.add_argument("--datasets", nargs="+", default=None, choices=[d.name for d in every])
    parser.add_argument("--methods", nargs="+", default=list_methods(), choices=list_methods())
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--quick", action="store_true", help="3 data sets, seed 1, smaller sets")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("bench-out/suite-data"))
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--strips", type=Path, default=None, help="only write sample strips here")
    parser.add_argument("--choose-lr", action="store_true", help="paper: the validation runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paper = args.suite == "paper"
    sizing = paper_suite.SIZING if paper else QUICK if args.quick else FULL
    own = list(paper_suite.PAPER_SETS) if paper else [*SUITE]  # unshifted only when asked for
    if args.quick and args.datasets is None and not paper:
        args.datasets = ["Hue25", "Sepia", "Synonyms"]
    datasets = [d for d in every if d.name in (args.datasets or [d.name for d in own])]
    if args.strips is not None:
        write_strips(args.strips, sizing, [NO_HEADROOM, *own] if not paper else own)
        return
    if args.quick:
        args.seeds = args.seeds[:1]
    if args.choose_lr:
        roots = {d.name: make_root(d, sizing, args.work) for d in datasets}
        paper_suite.choose_lr(roots, args.methods, args.shots, args.out / "paper-lr.json")
        return
    rows = (
        paper_suite.paper_rows(args.methods)
        if paper
        else [Row(m, m) for m in args.methods if m != "zeroshot"]
    )
    started = time.perf_counter()
    results = run_suite(args, sizing, datasets, rows)
    minutes = (time.perf_counter() - started) / 60
    suite_names = [n for n in results if n != NO_HEADROOM.name]
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"suite": args.suite, "sizing": sizing.__dict__, "seeds": args.seeds,
            "shots": args.shots, "minutes": round(minutes, 1), "threads": args.threads}  # fmt: skip
    if suite_names:
        meta["average"] = average(results, suite_names)
    stem = args.out / args.suite
    stem.with_suffix(".json").write_text(json.dumps({**meta, "datasets": results}, indent=2))
    table = markdown(results, suite_names) if suite_names else ""
    if NO_HEADROOM.name in results:
        table += "\n\nno headroom (unshifted):\n\n" + markdown(results, [NO_HEADROOM.name])
    stem.with_suffix(".md").write_text(table + "\n")
    if suite_names:
        chart(results, suite_names, stem.with_suffix(".png"), args.shots)
    print(table)
    print(f"\n{minutes:.1f} minutes; wrote {stem}.json, .md, .png")


if __name__ == "__main__":
    main()
