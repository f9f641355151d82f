"""The synthetic shapes world, its tasks and data specs, and a tiny `pretrain-mini` run."""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from promptserve.models.backbone import load_backbone
from promptserve.training.data import open_dataset, split_base_novel
from promptserve.training.errors import DataError
from promptserve.training.synthetic.captions import caption_for, fill_template
from promptserve.training.synthetic.pretrain import (
    PretrainConfig,
    add_arguments,
    pretrain_mini,
    run,
)
from promptserve.training.synthetic.shifts import rename
from promptserve.training.synthetic.tasks import (
    TASKS,
    base_novel_split,
    build_task,
    color_shape_classes,
    parse_synthetic_spec,
    task_classes,
)
from promptserve.training.synthetic.world import COLOURS, SHAPES, Scene, render, sample_scene


def pixels(scene: Scene, size: int = 64) -> np.ndarray:
    return np.asarray(render(scene, size), dtype=np.int16)


def same_images(first: list[Image.Image], second: list[Image.Image]) -> list[bool]:
    return [
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, second, strict=True)
    ]


def test_same_seed_same_pixels_different_seed_different() -> None:
    first = pixels(sample_scene(np.random.default_rng(3)))
    again = pixels(sample_scene(np.random.default_rng(3)))
    other = pixels(sample_scene(np.random.default_rng(4)))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_the_world_is_big_enough() -> None:
    assert len(COLOURS) >= 8
    assert {"circle", "square", "triangle", "star", "cross", "heart", "hexagon", "ring"} <= set(
        SHAPES
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("colour", list(COLOURS))
def test_every_shape_and_colour_renders(shape: str, colour: str) -> None:
    scene = sample_scene(np.random.default_rng(0), shape=shape, colour=colour, background="plain")
    image = render(scene, 64)
    assert (image.size, image.mode) == ((64, 64), "RGB")
    array = np.asarray(image, dtype=np.int16)
    # the shape's colour is present: some pixels are far from grey and close to the colour
    distance = np.abs(array - np.array(scene.rgb)).sum(axis=2)
    assert (distance < 30).sum() > 20


@pytest.mark.parametrize("shape", SHAPES)
def test_outline_and_filled_differ(shape: str) -> None:
    filled = sample_scene(np.random.default_rng(1), shape=shape, style="filled")
    outline = sample_scene(np.random.default_rng(1), shape=shape, style="outline")
    assert filled.radius == outline.radius  # same draws, only the style differs

    def coloured(scene: Scene) -> int:
        return int((np.abs(pixels(scene) - np.array(scene.rgb)).sum(axis=2) < 40).sum())

    assert coloured(filled) > 1.3 * coloured(outline)


@pytest.mark.parametrize("background", ["plain", "noise", "stripes"])
def test_backgrounds_render(background: str) -> None:
    scene = sample_scene(np.random.default_rng(2), background=background)  # type: ignore[arg-type]
    _, counts = np.unique(pixels(scene).reshape(-1, 3), axis=0, return_counts=True)
    shares = np.sort(counts)[::-1] / counts.sum()  # most common colours first
    if background == "plain":
        assert shares[0] > 0.4
    elif background == "stripes":
        assert shares[1] > 0.1  # two grey levels share the background
        assert shares[:2].sum() > 0.4
    else:
        assert len(counts) > 60  # grain: many distinct grey levels


def test_captions_commit_to_what_they_name() -> None:
    scene = sample_scene(np.random.default_rng(5), shape="star", colour="orange", style="outline")
    caption = fill_template("{a} {st} {c} {s}", scene)
    assert caption.text == "an outlined orange star"
    assert caption.matches(scene)
    ring = sample_scene(np.random.default_rng(5), shape="ring", colour="orange")
    assert not caption.matches(ring)
    only_shape = fill_template("a photo of a {s}.", scene)
    assert only_shape.colour is None
    assert only_shape.matches(sample_scene(np.random.default_rng(6), shape="star", colour="blue"))
    rng = np.random.default_rng(0)
    assert all(caption_for(scene, rng, single_attribute=0.5).matches(scene) for _ in range(50))


def test_task_classes_and_base_novel_split() -> None:
    names = color_shape_classes()
    assert len(names) == 64
    assert names == sorted(names)
    assert "red star" in names
    base, novel = base_novel_split(names)
    assert (base, novel) == (names[:32], names[32:])
    assert (task_classes("color-shape-base"), task_classes("color-shape-novel")) == (base, novel)
    assert base_novel_split(["c", "a", "b"]) == (["a", "b"], ["c"])  # base = first ceil(n/2)
    assert task_classes("shape") == sorted(SHAPES)
    assert task_classes("color") == sorted(COLOURS)
    assert all(len(task_classes(task)) in (8, 32, 64) for task in TASKS)


def test_build_task_is_deterministic_and_splits_differ() -> None:
    train = build_task("synthetic:shape?n=2&seed=1", "train")
    again = build_task("synthetic:shape?n=2&seed=1", "train")
    test = build_task("synthetic:shape?n=2&seed=1", "test")
    assert train.classnames == sorted(SHAPES)
    assert train.labels == [i // 2 for i in range(16)]
    assert same_images(train.images, again.images) == [True] * 16
    assert not any(same_images(train.images, test.images))


def test_base_images_are_the_color_shape_images_of_those_classes() -> None:
    full = build_task("synthetic:color-shape?n=1&size=32", "test")
    base = build_task("synthetic:color-shape-base?n=1&size=32", "test")
    assert base.classnames == full.classnames[:32]
    assert all(same_images(base.images, full.images[:32]))
    assert base.images[0].size == (32, 32)


def test_spec_options() -> None:
    spec = parse_synthetic_spec("synthetic:color?n=3&seed=9&style=outline&background=noise&size=48")
    assert (spec.task, spec.n, spec.seed, spec.style, spec.background, spec.size) == (
        "color",
        3,
        9,
        "outline",
        "noise",
        48,
    )
    default = parse_synthetic_spec("synthetic:color-shape")
    assert (default.n, default.seed) == (16, 0)
    assert (default.style, default.background) == ("filled", "clean")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("synthetic:colour-shape", "unknown synthetic task"),
        ("images/", "not a synthetic data spec"),
        ("synthetic:shape?n=0", "at least 1"),
        ("synthetic:shape?n=many", "integer"),
        ("synthetic:shape?style=dotted", "style must be one of"),
        ("synthetic:shape?background=sky", "background must be one of"),
        ("synthetic:shape?colour=red", "unknown option"),
        ("synthetic:shape?n=1&n=2", "twice"),
        ("synthetic:shape?n=4&", "malformed options"),
        ("synthetic:shape?seed", "malformed options"),
    ],
)
def test_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_synthetic_spec(spec)


def test_build_task_rejects_unknown_split() -> None:
    with pytest.raises(DataError, match="split"):
        build_task("synthetic:shape?n=1", "validation")


def test_pretrain_smoke_writes_loadable_weights_and_record(tmp_path: Path) -> None:
    out = tmp_path / "mini.safetensors"
    config = PretrainConfig(steps=2, batch_size=8, threads=1, eval_per_class=1, eval_every=1)
    record = pretrain_mini(out, config)
    assert out.stat().st_size < 25 * 2**20
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert (saved["architecture"], saved["steps"], saved["seed"]) == ("mini", 2, 0)
    assert set(saved["accuracies"]) >= {"color_shape", "colour", "outline", "base", "novel"}
    assert saved["recipe"]["batch_size"] == 8
    assert len(saved["learning_curve"]) == 1
    backbone = load_backbone(f"mini@{out}")
    assert backbone.preprocess.size == 64
    assert backbone.id.weights_sha256 == saved["weights_sha256"]


def test_pretrain_continues_from_weights_and_keeps_the_parent_record(tmp_path: Path) -> None:
    first = tmp_path / "first.safetensors"
    small = {"batch_size": 8, "threads": 1, "eval_per_class": 1, "eval_every": 0}
    parent = pretrain_mini(first, PretrainConfig(steps=1, **small))
    second = tmp_path / "second.safetensors"
    zero_steps = PretrainConfig(steps=0, init=str(first), **small)
    record = pretrain_mini(second, zero_steps)
    assert record["weights_sha256"] == parent["weights_sha256"]  # started from `first`
    assert record["continued_from"] == json.loads(json.dumps(parent))
    moved = pretrain_mini(
        tmp_path / "third.safetensors", PretrainConfig(steps=1, **{**small, "init": str(first)})
    )
    assert moved["weights_sha256"] != parent["weights_sha256"]


def test_pretrain_cli_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "m.safetensors"
    args = parser.parse_args(
        ["--out", str(out), "--steps", "1", "--batch-size", "4", "--threads", "1"]
        + ["--eval-per-class", "1", "--lr", "0.002"]
    )
    assert args.lr == 0.002
    assert args.head_scale == PretrainConfig().head_scale
    assert run(args) == 0
    assert out.is_file()
    assert '"accuracies"' in capsys.readouterr().out


def test_open_dataset_reads_synthetic_specs_lazily_and_picklably() -> None:
    source = open_dataset("synthetic:color-shape-novel?n=2&seed=4", split="test")
    assert source.class_names == task_classes("color-shape-novel")
    assert len(source) == 64
    assert source.counts() == dict.fromkeys(source.class_names, 2)
    first = source.by_class()[source.class_names[0]][0]
    eager = build_task("synthetic:color-shape-novel?n=1&seed=4", "test")
    assert same_images([first.open_rgb()], [eager.images[0]]) == [True]
    copy = pickle.loads(pickle.dumps(first))
    assert same_images([copy.open_rgb()], [first.open_rgb()]) == [True]
    val = open_dataset("synthetic:shape?n=1", split="val").items[0].open_rgb()
    train = open_dataset("synthetic:shape?n=1", split="train").items[0].open_rgb()
    assert same_images([val], [train]) == [False]


def test_open_dataset_reports_bad_synthetic_specs() -> None:
    with pytest.raises(DataError, match="unknown synthetic task"):
        open_dataset("synthetic:animals")


PAPER = "synthetic:color-shape?pick=disjoint&classes=16&seed=7"


def test_paper_options_parse_with_defaults() -> None:
    default = parse_synthetic_spec("synthetic:color-shape").halves
    assert (default.pick, default.class_shift, default.shift_on, default.names_on) == (
        "random", "", "all", "all",
    )  # fmt: skip
    spec = parse_synthetic_spec(f"{PAPER}&class_shift=hue40&shift_on=base&names_on=base")
    assert (spec.halves.pick, spec.halves.class_shift) == ("disjoint", "hue40")
    assert (spec.halves.shift_on, spec.halves.names_on) == ("base", "base")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("synthetic:color-shape?pick=spread", "pick must be one of"),
        ("synthetic:shape?pick=disjoint", "applies to the color-shape task"),
        ("synthetic:color-shape?pick=disjoint&classes=15", "even number"),
        ("synthetic:color-shape?pick=disjoint&classes=34", "classes must be in|even number"),
        ("synthetic:color-shape?shift_on=base", "needs pick=disjoint"),
        ("synthetic:color-shape?pick=disjoint&names_on=novel", "names_on must be one of"),
        ("synthetic:color-shape?class_shift=swirl3", "unknown shift"),
    ],
)
def test_paper_option_errors(spec: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_synthetic_spec(spec)


def test_disjoint_halves_share_no_word_and_lead_the_label_order() -> None:
    source = open_dataset(f"{PAPER}&n=1", split="train")
    base, novel = split_base_novel(source.class_names)
    assert len(base) == len(novel) == 8
    base_words = {word for name in base for word in name.split(" ")}
    novel_words = {word for name in novel for word in name.split(" ")}
    assert not base_words & novel_words
    assert len(base_words) == len(novel_words) == 8  # four colours and four shapes a half
    every = open_dataset("synthetic:color-shape?pick=disjoint&n=1", split="train").class_names
    assert len(every) == 32
    assert set(base) < set(every[:16])  # a smaller pick keeps part of each half
    assert set(novel) < set(every[16:])


def test_base_only_renaming_keeps_the_halves_and_novel_names() -> None:
    plain = split_base_novel(open_dataset(f"{PAPER}&n=1", split="train").class_names)
    renamed = open_dataset(f"{PAPER}&n=1&names=synonym&names_on=base", split="train")
    base, novel = split_base_novel(renamed.class_names)
    assert novel == plain[1]
    assert sorted(rename(name, "synonym") for name in plain[0]) == base
    everywhere = open_dataset(f"{PAPER}&n=1&names=synonym", split="train").class_names
    assert split_base_novel(everywhere)[1] == sorted(rename(n, "synonym") for n in plain[1])


def test_paper_splits_are_deterministic_and_disjoint() -> None:
    spec = f"{PAPER}&n=4&class_shift=hue40"
    splits = {split: build_task(spec, split).images for split in ("train", "val", "test")}
    assert all(same_images(splits["val"], build_task(spec, "val").images))
    for first, second in (("train", "val"), ("val", "test"), ("train", "test")):
        assert not any(same_images(splits[first], splits[second]))
