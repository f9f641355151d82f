"""Appearance shifts, renamed classes and CoOp/Dassl roots written from specs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from promptserve.training.cli import main
from promptserve.training.data import open_dataset, split_base_novel
from promptserve.training.dataset_writer import dataset_name, write_dassl_root
from promptserve.training.errors import DataError
from promptserve.training.synthetic.halves import class_shifts
from promptserve.training.synthetic.shifts import KINDS, Shift, apply_shifts, parse_shifts, rename
from promptserve.training.synthetic.tasks import build_task, parse_synthetic_spec


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int32)


@pytest.fixture
def red() -> Image.Image:
    image = Image.new("RGB", (16, 16), (220, 30, 30))
    image.paste((40, 40, 40), (0, 0, 7, 16))
    return image


def test_parse_shifts_reads_kinds_amounts_defaults_and_chains() -> None:
    assert parse_shifts("hue25") == (Shift("hue", 25.0),)
    assert parse_shifts("sepia") == (Shift("sepia", 100.0),)
    assert parse_shifts("hue-40+lowres12") == (Shift("hue", -40.0), Shift("lowres", 12.0))
    assert parse_shifts("desat0.5 blur1") == (Shift("desat", 0.5), Shift("blur", 1.0))
    assert parse_shifts("") == parse_shifts("none") == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [("swirl3", "unknown shift"), ("hue", "needs an amount"), ("sepia150", "must be in"),
     ("lowres1", "must be in"), ("hue25+", "unknown shift"), ("25", "unknown shift")],
)  # fmt: skip
def test_bad_shifts_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_shifts(text)


def test_hue_rotation_moves_red_towards_yellow_and_360_is_identity(red: Image.Image) -> None:
    turned = pixels(apply_shifts(parse_shifts("hue40"), red, np.random.default_rng(0)))
    assert turned[0, 15, 1] > 100  # red + green: orange/yellow
    assert turned[0, 15, 0] > 150
    assert (turned[0, 0] == 40).all()  # grey has no hue
    full = pixels(apply_shifts(parse_shifts("hue360"), red, np.random.default_rng(0)))
    assert np.abs(full - pixels(red)).max() <= 3


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_keeps_size_and_mode_and_is_deterministic(kind: str, red: Image.Image) -> None:
    required = {"hue": 40.0, "contrast": 30.0, "lowres": 4.0, "blur": 1.0, "noise": 20.0}
    amount = KINDS[kind].default or required[kind]
    shift = Shift(kind, amount)
    first = shift.apply(red, np.random.default_rng(3))
    again = shift.apply(red, np.random.default_rng(3))
    assert first.size == red.size
    assert first.mode == "RGB"
    assert (pixels(first) == pixels(again)).all()
    assert (pixels(first) != pixels(red)).any(), f"{kind}{amount:g} left the image unchanged"


def test_shift_specifics(red: Image.Image) -> None:
    rng = np.random.default_rng(0)
    grey = pixels(Shift("desat", 100).apply(red, rng))
    assert (grey[..., 0] == grey[..., 1]).all()
    assert (grey[..., 1] == grey[..., 2]).all()
    negative = pixels(Shift("invert", 100).apply(red, rng))
    assert (negative == 255 - pixels(red)).all()
    flat = pixels(Shift("contrast", 10).apply(red, rng))
    assert np.abs(flat - 128).max() < np.abs(pixels(red) - 128).max() / 5
    blocky = pixels(Shift("lowres", 4).apply(Image.effect_noise((16, 16), 60).convert("RGB"), rng))
    assert (blocky[:4, :4] == blocky[0, 0]).all()


def test_renamed_classes_are_words_mini_never_read() -> None:
    assert rename("red star", "synonym") == "crimson pentagram"
    assert rename("red star", "catalogue") == "item r7"
    assert rename("star", "plain") == "star"
    with pytest.raises(DataError, match="names must be one of"):
        rename("red star", "latin")


def test_spec_options_shift_names_and_classes() -> None:
    spec = "synthetic:color-shape?shift=hue25&names=synonym&classes=6&n=2"
    task = build_task(spec, "test")
    assert len(task.classnames) == 6
    assert task.classnames == sorted(task.classnames)
    assert all(" " in name and "red" not in name for name in task.classnames)
    assert build_task(spec, "test").classnames == task.classnames  # a fixed pick
    plain = build_task("synthetic:color-shape?classes=6&n=2", "test")
    assert sorted(rename(n, "synonym") for n in plain.classnames) == task.classnames
    bad_options = [("shift=swirl", "unknown shift"), ("names=latin", "names must be"),
                   ("classes=1", "classes must"), ("classes=65", "classes must")]  # fmt: skip
    for bad, message in bad_options:
        with pytest.raises(DataError, match=message):
            parse_synthetic_spec(f"synthetic:color-shape?{bad}")


def test_shift_changes_the_drawn_scene_not_at_all() -> None:
    """A shifted image is the unshifted scene, transformed: hue360 gives the same picture."""
    plain = build_task("synthetic:shape?n=2", "train").images
    turned = build_task("synthetic:shape?n=2&shift=hue360", "train").images
    for a, b in zip(plain, turned, strict=True):
        assert np.abs(pixels(a) - pixels(b)).max() <= 4


def test_make_dataset_writes_a_dassl_root_that_reads_back(tmp_path: Path) -> None:
    spec = "synthetic:color-shape?shift=sepia70&classes=5&names=catalogue&seed=3"
    out = tmp_path / "root"
    assert main(["make-dataset", spec, str(out), "--train", "3", "--val", "1", "--test", "2"]) == 0
    split_file = out / "split_zhou_ColorShapeSepia70Catalogue.json"
    splits = json.loads(split_file.read_text())
    assert {k: len(v) for k, v in splits.items()} == {"train": 15, "val": 5, "test": 10}
    names = sorted({entry[2] for entry in splits["train"]})
    for entry in splits["train"] + splits["test"]:
        assert entry[1] == names.index(entry[2])  # integer labels in sorted-name order
        assert (out / "images" / entry[0]).is_file()
    train = open_dataset(str(out), split="train")
    assert train.class_names == names
    assert len(train) == 15
    base, _ = split_base_novel(names)
    assert base == names[:3]
    # the written images are the spec's own images
    generated = build_task(spec.replace("seed=3", "seed=3&n=2"), "test")
    on_disk = open_dataset(str(out), split="test").items[0].open_rgb()
    assert (pixels(on_disk) == pixels(generated.images[0])).all()


def test_make_dataset_refuses_a_non_empty_target_and_bad_specs(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    with pytest.raises(DataError, match="not an empty directory"):
        write_dassl_root("synthetic:shape?n=1", tmp_path / "taken")
    with pytest.raises(DataError, match="unknown shift"):
        write_dassl_root("synthetic:shape?shift=swirl", tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert main(["make-dataset", "synthetic:nope", str(tmp_path / "n")]) == 2


def test_dataset_names() -> None:
    assert dataset_name("synthetic:color-shape?shift=hue25") == "ColorShapeHue25"
    assert dataset_name("synthetic:shape?n=4&seed=2&shift=sepia") == "ShapeSepia"


PAPER = "synthetic:color-shape?pick=disjoint&classes=16&seed=7&n=3"


def test_class_shift_scales_the_amount_by_a_factor_per_class() -> None:
    names = ["red circle", "red cross", "yellow square", "cyan star", "blue ring"]
    amounts = [class_shifts("hue40+sepia80", name) for name in names]
    assert amounts == [class_shifts("hue40+sepia80", name) for name in names]  # deterministic
    hues = [shifts[0].amount for shifts in amounts]
    assert all(20 <= abs(a) <= 40 for a in hues)
    assert len(set(hues)) == len(hues)
    assert {a > 0 for a in hues} == {True, False}  # hue turns both ways
    assert all(40 <= shifts[1].amount <= 80 for shifts in amounts)  # sepia only one way
    assert class_shifts("", "red circle") == ()


def test_class_shift_differs_per_class_on_the_same_scene() -> None:
    plain, shifted = (build_task(f"{PAPER}{extra}", "test") for extra in ("", "&class_shift=hue60"))
    turns = []
    for label in range(len(plain.classnames)):
        at = plain.labels.index(label)
        before, after = (
            np.asarray(t.images[at].convert("HSV"), np.int32) for t in (plain, shifted)
        )
        colourful = before[..., 1] > 100
        turn = (after[..., 0] - before[..., 0])[colourful] % 256
        turns.append(int(np.median(turn)))
    assert len(set(turns)) >= 6, turns  # 8 classes, 8 amounts (a few px of rounding apart)


def test_base_only_shift_leaves_novel_images_untouched() -> None:
    plain, shifted = (build_task(f"{PAPER}{x}", "test") for x in ("", "&shift=hue50&shift_on=base"))
    base, novel = split_base_novel(plain.classnames)
    for i, label in enumerate(plain.labels):
        same = np.array_equal(np.asarray(plain.images[i]), np.asarray(shifted.images[i]))
        assert same == (plain.classnames[label] in novel)
    everywhere = build_task(f"{PAPER}&shift=hue50", "test")
    assert not any(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(plain.images, everywhere.images, strict=True)
    )
    assert base  # the split has both halves
