"""The papers' evaluation protocols, on the synthetic world or on a CoOp/Dassl dataset root.

* ``fewshot``    train with K shots per class, test on every class;
* ``base2novel`` train on the base half (classes in label order, the first ceil(n/2), as Dassl's
  ``subsample_classes``) with K shots (on real data drawn over every class first, as CoOp's
  data sets do); test the base classes against a base-only label set and
  the novel ones against a novel-only label set; HM = 2BN / (B + N) of the mean base and novel
  accuracies;
* ``domain``     train on the source domain, test on shifted ones (synthetic: outline style,
  noisy backgrounds; real data: the test splits of ``targets``);
* ``cross``      train on colour-shape, test on other label sets (synthetic: shape only, colour
  only; real data: the test splits of ``targets``, each with its own classes).

Every seed trains a fresh learner; the final weights are evaluated (no selection on test data).
With method ``auto`` each seed chooses its method on folds of its own training images
(`training.auto`); the report's ``auto`` holds every seed's leaderboard.
Each test set is scored with its own data set's template (cross-data-set targets as in the
releases). The report names the classes of every set in label order, the template and the recipe.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from promptserve.models.backbone import DEFAULT_BACKBONE
from promptserve.models.preprocess import eval_transform
from promptserve.training.api import TrainRequest, fit_learner
from promptserve.training.auto import needs_training
from promptserve.training.data import (
    ImageDataset,
    ImageSource,
    make_loader,
    open_dataset,
    restrict_classes,
    sample_few_shot,
    split_base_novel,
)
from promptserve.training.errors import DataError
from promptserve.training.loop import Progress, evaluate
from promptserve.training.recipe import evaluated_with, recipe_of, template_of
from promptserve.training.request import AUTO_BUDGET_S

log = logging.getLogger(__name__)

ProtocolName = Literal["fewshot", "base2novel", "domain", "cross"]
PROTOCOLS: tuple[ProtocolName, ...] = ("fewshot", "base2novel", "domain", "cross")
SYNTHETIC = "synthetic"
TEST_IMAGES_PER_CLASS = 16  # 64 colour-shape classes -> 1024 test images
TEST_SEED = 0  # one fixed synthetic test set for every training seed


@dataclass(frozen=True, kw_only=True)
class ProtocolRequest:
    protocol: ProtocolName
    method: str
    shots: int = 16
    seeds: tuple[int, ...] = (1, 2, 3)
    epochs: int | None = None
    backbone: str = DEFAULT_BACKBONE
    data: str = SYNTHETIC  # "synthetic" or a CoOp/Dassl dataset root
    targets: tuple[str, ...] = ()  # domain / cross test sets for real data
    overrides: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    device: str = "cpu"
    workers: int = 0  # data-loader processes for training and testing
    auto_budget_s: float = AUTO_BUDGET_S  # method=auto: seconds after which no candidate starts


@dataclass(frozen=True)
class Plan:
    """What one seed trains on and which (name, test source) pairs it is scored on."""

    train: ImageSource
    tests: list[tuple[str, ImageSource]]
    drawn: bool = False  # `train` already holds the few-shot draw (real data, as Dassl)


def run_protocol(
    request: ProtocolRequest,
    progress: Callable[[str], None] | None = None,
    steps: Callable[[Progress], None] | None = None,
) -> dict[str, Any]:
    """Train one learner per seed and evaluate it; returns the JSON-ready report.

    `progress` gets a line per seed; `steps` every training step."""
    if request.protocol not in PROTOCOLS:
        raise DataError(f"unknown protocol {request.protocol!r}; known: {', '.join(PROTOCOLS)}")
    per_seed: list[dict[str, float]] = []
    chosen: list[dict[str, Any]] = []  # method=auto: each seed's leaderboard
    used: dict[str, Any] = {}
    for seed in request.seeds:
        plan = make_plan(request, seed)
        train = TrainRequest(
            method=request.method, data=request.data, store=Path("."), name="protocol",
            backbone=request.backbone, shots=None if plan.drawn else request.shots, seed=seed,
            epochs=request.epochs,
            overrides=request.overrides, preset=request.preset, device=request.device,
            workers=request.workers, auto_budget_s=request.auto_budget_s,
        )  # fmt: skip
        fitted = fit_learner(train, steps, source=plan.train)
        if fitted.auto is not None:
            chosen.append({"seed": seed} | fitted.auto)
        transform = eval_transform(fitted.learner.preprocess)
        scores: dict[str, float] = {}
        templates: dict[str, Any] = {"train": template_of(fitted.learner.config)}
        for name, source in plan.tests:
            dataset = ImageDataset(source, transform)
            loader = make_loader(dataset, 128, shuffle=False, seed=0, num_workers=request.workers)
            own = source.template is not None and _prompted_as(source) != _prompted_as(plan.train)
            with evaluated_with(fitted.learner, source) if own else contextlib.nullcontext():
                templates[name] = template_of(fitted.learner.config)
                scores[name] = evaluate(fitted.learner, loader, source.class_names, request.device)
        if request.protocol == "base2novel":
            scores["hm"] = harmonic_mean(scores["base"], scores["novel"])
        per_seed.append(scores)
        used = describe_run(plan, fitted.learner.config, templates)
        if progress is not None:
            progress(f"seed {seed}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
    return summarise(request, per_seed) | used | ({"auto": chosen} if chosen else {})


def describe_run(plan: Plan, config: Any, templates: dict[str, Any]) -> dict[str, Any]:
    """What a run used: the data sets, their classes in label order, templates and recipe."""
    sets = [("train", plan.train), *plan.tests]
    return {
        "datasets": {name: source.dataset for name, source in sets},
        "classes": {name: list(source.class_names) for name, source in sets},
        "template": templates,
        "recipe": recipe_of(config),
    }


def make_plan(request: ProtocolRequest, seed: int) -> Plan:
    if request.data == SYNTHETIC:
        return _synthetic_plan(request.protocol, request.shots, seed)
    return _dataset_plan(request, seed)


def _synthetic_plan(protocol: ProtocolName, shots: int, seed: int) -> Plan:
    def world(task: str, split: str, n: int, extra: str = "") -> ImageSource:
        spec_seed = seed if split == "train" else TEST_SEED
        return open_dataset(f"synthetic:{task}?n={n}&seed={spec_seed}{extra}", split=split)

    n = TEST_IMAGES_PER_CLASS
    if protocol == "base2novel":
        return Plan(
            world("color-shape-base", "train", shots),
            [
                ("base", world("color-shape-base", "test", n)),
                ("novel", world("color-shape-novel", "test", n)),
            ],
        )
    train = world("color-shape", "train", shots)
    if protocol == "fewshot":
        return Plan(train, [("accuracy", world("color-shape", "test", n))])
    if protocol == "domain":
        return Plan(
            train,
            [
                ("source", world("color-shape", "test", n)),
                ("outline", world("color-shape", "test", n, "&style=outline")),
                ("noise", world("color-shape", "test", n, "&background=noise")),
            ],
        )
    return Plan(  # cross: the 8-way label sets get 8x the images per class
        train,
        [
            ("color-shape", world("color-shape", "test", n)),
            ("shape", world("shape", "test", 8 * n)),
            ("color", world("color", "test", 8 * n)),
        ],
    )


def _dataset_plan(request: ProtocolRequest, seed: int) -> Plan:
    """As CoOp's data sets: the shots are drawn over every class of the training split, and
    only then does base-to-novel keep the base half (so the base images are the base classes'
    part of the all-class draw, which a draw over the base classes alone would not give)."""
    train = open_dataset(request.data, split="train")
    quiet = not needs_training(request.method)  # the images only name the classes
    train = sample_few_shot(train, request.shots, seed, quiet=quiet)
    test = open_dataset(request.data, split="test")
    if request.protocol == "base2novel":
        base, novel = split_base_novel(train.class_names)
        return Plan(
            restrict_classes(train, base),
            [("base", restrict_classes(test, base)), ("novel", restrict_classes(test, novel))],
            drawn=True,
        )
    tests = [("accuracy" if request.protocol == "fewshot" else "source", test)]
    if request.protocol in ("domain", "cross"):
        if not request.targets:
            raise DataError(f"the {request.protocol} protocol on real data needs --target sets")
        for target in request.targets:
            source = open_dataset(target, split="test")
            tests.append((source.dataset or Path(target).name or target, source))
    return Plan(train, tests, drawn=True)


def _prompted_as(source: ImageSource) -> tuple[str | None, str | None]:
    """What decides a source's template: its data set (a method may have its own template for
    it) and the data set's template."""
    return source.dataset, source.template


def harmonic_mean(base: float, novel: float) -> float:
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)


def summarise(request: ProtocolRequest, per_seed: list[dict[str, float]]) -> dict[str, Any]:
    keys = list(per_seed[0])
    mean = {k: statistics.fmean(s[k] for s in per_seed) for k in keys}
    std = {k: statistics.pstdev(s[k] for s in per_seed) for k in keys}
    if request.protocol == "base2novel":
        mean["hm"] = harmonic_mean(mean["base"], mean["novel"])  # HM of the means, as the papers
    report: dict[str, Any] = {
        "protocol": request.protocol,
        "method": request.method,
        "shots": request.shots,
        "seeds": list(request.seeds),
        "backbone": request.backbone,
        "data": request.data,
        "epochs": request.epochs,
        **{k: round(v, 2) for k, v in mean.items()},
        "std": {k: round(v, 2) for k, v in std.items()},
        "per_seed": [{k: round(v, 2) for k, v in s.items()} for s in per_seed],
    }
    return report


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table: one row per seed, then mean and std (percent)."""
    keys = list(report["std"])
    head = " · ".join(
        [report["protocol"], report["method"], f"{report['shots']} shots", report["backbone"]]
    )
    rows = [["seed", *keys]]
    rows += [[str(seed), *(f"{s[k]:.2f}" for k in keys)] for seed, s in
             zip(report["seeds"], report["per_seed"], strict=True)]  # fmt: skip
    rows.append(["mean", *(f"{report[k]:.2f}" for k in keys)])
    rows.append(["std", *(f"{report['std'][k]:.2f}" for k in keys)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([head, *lines])
