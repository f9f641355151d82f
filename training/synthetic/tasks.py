"""Classification tasks built from the synthetic shapes world, and the ``synthetic:`` data spec.

A spec names a task and options, anywhere a data set path is accepted::

    synthetic:<task>[?key=value&key=value...]

tasks
  ``color-shape``         64 classes "red star", "blue ring", ... (colour x shape)
  ``color-shape-base``    the first half of the sorted colour-shape names (base = first ceil(n/2))
  ``color-shape-novel``   the second half
  ``shape``               8 classes "circle", "cross", ... (colour drawn at random)
  ``color``               8 classes "blue", "cyan", ... (shape drawn at random)
options
  ``n``           images per class (default 16)
  ``seed``        world seed (default 0); the train and test splits of one seed never share images
  ``style``       ``filled`` (default), ``outline`` or ``any``
  ``background``  ``clean`` (plain or stripes; default), ``plain``, ``noise``, ``stripes``, ``any``
  ``size``        image side in pixels (default 64, the mini backbone's input)
  ``shift``       an appearance shift, e.g. ``hue25`` or ``sepia+lowres24`` (training/shifts.py)
  ``names``       ``plain`` (default), ``synonym`` or ``catalogue``: class names mini never read
  ``classes``     keep this many of the task's classes (a fixed pick per task and count)
  ``pick``        ``random`` (default: that fixed pick) or ``disjoint``: base and novel halves
                  that share no colour or shape word (training/synthetic/halves.py)
  ``class_shift`` a shift whose amount each class scales by its own factor, e.g. ``hue40``
  ``shift_on``    ``all`` (default) or ``base``: the classes ``shift`` and ``class_shift`` touch
  ``names_on``    ``all`` (default) or ``base``: the classes ``names`` renames

Domain-shift test sets are the same task with another style or background, e.g.
``synthetic:color-shape?style=outline`` or ``synthetic:color-shape?background=noise``.
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass
from typing import Literal, cast, get_args
from urllib.parse import parse_qsl

import numpy as np
from PIL import Image

from promptserve.training.errors import DataError
from promptserve.training.sources import ImageSource, LabeledImage
from promptserve.training.synthetic.halves import (
    OPTION_KEYS,
    HalfOptions,
    class_shifts,
    disjoint_halves,
    parse_half_options,
)
from promptserve.training.synthetic.shifts import NAMINGS, apply_shifts, parse_shifts, rename
from promptserve.training.synthetic.world import (
    BACKGROUNDS,
    COLOURS,
    DEFAULT_SIZE,
    SHAPES,
    STYLES,
    Background,
    Style,
    render,
    sample_scene,
)

SPEC_PREFIX = "synthetic:"
TaskName = Literal["color-shape", "color-shape-base", "color-shape-novel", "shape", "color"]
TASKS: tuple[TaskName, ...] = get_args(TaskName)
STYLE_CHOICES = ("filled", "outline", "any")
BACKGROUND_CHOICES = ("clean", "plain", "noise", "stripes", "any")
SPLITS = ("train", "test", "val")  # the index seeds the split: never reorder


@dataclass(frozen=True, kw_only=True)
class SyntheticSpec:
    """A parsed ``synthetic:`` data spec."""

    task: TaskName
    n: int = 16  # images per class
    seed: int = 0
    style: str = "filled"  # one of STYLE_CHOICES
    background: str = "clean"  # one of BACKGROUND_CHOICES
    size: int = DEFAULT_SIZE
    shift: str = ""  # see training/shifts.py; "" leaves the images as drawn
    names: str = "plain"  # one of training.synthetic.shifts.NAMINGS
    classes: int | None = None  # keep this many classes; None keeps all
    halves: HalfOptions = HalfOptions()  # the pick, per-class and base-only options


@dataclass(frozen=True)
class SyntheticTask:
    """Generated images with integer labels into `classnames`."""

    classnames: list[str]
    images: list[Image.Image]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.images)

    def pairs(self) -> list[tuple[Image.Image, int]]:
        return list(zip(self.images, self.labels, strict=True))


def color_shape_classes() -> list[str]:
    """All 64 "colour shape" names, sorted."""
    return sorted(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)


def base_novel_split(classnames: list[str]) -> tuple[list[str], list[str]]:
    """Sorted names; base = the first ceil(n/2), novel = the rest."""
    names = sorted(classnames)
    cut = math.ceil(len(names) / 2)
    return names[:cut], names[cut:]


def task_classes(task: str) -> list[str]:
    if task == "color-shape":
        return color_shape_classes()
    if task == "color-shape-base":
        return base_novel_split(color_shape_classes())[0]
    if task == "color-shape-novel":
        return base_novel_split(color_shape_classes())[1]
    if task == "shape":
        return sorted(SHAPES)
    if task == "color":
        return sorted(COLOURS)
    raise DataError(f"unknown synthetic task {task!r}; known: {', '.join(TASKS)}")


def is_synthetic_spec(text: str) -> bool:
    return text.startswith(SPEC_PREFIX)


def parse_synthetic_spec(text: str) -> SyntheticSpec:
    """Parse ``synthetic:<task>[?key=value&...]``; raise DataError with the valid choices."""
    if not is_synthetic_spec(text):
        raise DataError(f"not a synthetic data spec: {text!r} (expected {SPEC_PREFIX}<task>)")
    task, _, query = text[len(SPEC_PREFIX) :].partition("?")
    task_classes(task)  # validates the name
    options: dict[str, str] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise DataError(
            f"malformed options in {text!r}: expected key=value pairs joined by '&'"
        ) from None
    for key, value in pairs:
        if key in options:
            raise DataError(f"option {key!r} given twice in {text!r}")
        options[key] = value
    known = ("n", "seed", "style", "background", "size", "shift", "names", "classes", *OPTION_KEYS)
    unknown = set(options) - set(known)
    if unknown:
        raise DataError(
            f"unknown option(s) {sorted(unknown)} in {text!r}; known: {', '.join(known)}"
        )
    style = options.get("style", "filled")
    background = options.get("background", "clean")
    if style not in STYLE_CHOICES:
        raise DataError(f"style must be one of {STYLE_CHOICES}, got {style!r}")
    if background not in BACKGROUND_CHOICES:
        raise DataError(f"background must be one of {BACKGROUND_CHOICES}, got {background!r}")
    parse_shifts(options.get("shift", ""))  # validates the shift
    if options.get("names", "plain") not in NAMINGS:
        raise DataError(f"names must be one of {NAMINGS}, got {options['names']!r}")
    classes = _positive_int(options, "classes", 0) if "classes" in options else None
    if classes is not None and not 2 <= classes <= len(task_classes(task)):
        raise DataError(f"classes must be in 2..{len(task_classes(task))} for {task}")
    return SyntheticSpec(
        task=task,  # type: ignore[arg-type]  # checked by task_classes above
        n=_positive_int(options, "n", 16),
        seed=_int(options, "seed", 0),
        style=style,
        background=background,
        size=_positive_int(options, "size", DEFAULT_SIZE),
        shift=options.get("shift", ""),
        names=options.get("names", "plain"),
        classes=classes,
        halves=parse_half_options(options, task, classes),
    )


def _int(options: dict[str, str], key: str, default: int) -> int:
    try:
        return int(options.get(key, default))
    except ValueError:
        raise DataError(f"option {key} must be an integer, got {options[key]!r}") from None


def _positive_int(options: dict[str, str], key: str, default: int) -> int:
    value = _int(options, key, default)
    if value < 1:
        raise DataError(f"option {key} must be at least 1, got {value}")
    return value


def build_task(spec: SyntheticSpec | str, split: str = "train") -> SyntheticTask:
    """Generate a task's images: `n` per class, class by class, deterministic in (seed, split)."""
    if isinstance(spec, str):
        spec = parse_synthetic_spec(spec)
    _check_split(split)
    classes = spec_classes(spec)
    images: list[Image.Image] = []
    labels: list[int] = []
    for label, (_, drawn) in enumerate(classes):
        for index in range(spec.n):
            images.append(render_item(spec, split, drawn, index))
            labels.append(label)
    return SyntheticTask(classnames=[name for name, _ in classes], images=images, labels=labels)


def spec_classes(spec: SyntheticSpec) -> list[tuple[str, str]]:
    """(class name as the data set shows it, world name it is drawn from), sorted by the first."""
    if spec.halves.pick == "disjoint":  # label order: the base half, then the novel half
        base, novel = disjoint_halves(spec.classes)
        renamed = spec.names if spec.halves.names_on == "all" else "plain"
        return sorted((rename(n, spec.names), n) for n in base) + sorted(
            (rename(n, renamed), n) for n in novel
        )
    names = task_classes(spec.task)
    if spec.classes is not None:
        pick = np.random.default_rng([spec.classes, _name_key(spec.task)])
        names = sorted(names[i] for i in pick.permutation(len(names))[: spec.classes])
    return sorted((rename(name, spec.names), name) for name in names)


def open_synthetic(spec: str, split: str) -> ImageSource:
    """A ``synthetic:`` spec as an `ImageSource` whose images are rendered when first opened."""
    parsed = parse_synthetic_spec(spec)
    _check_split(split)
    classes = spec_classes(parsed)
    items = [
        LabeledImage(
            label=name,
            loader=functools.partial(render_item, parsed, split, drawn, index),
            name=f"{spec}#{split}/{name}/{index:06d}",
        )
        for name, drawn in classes
        for index in range(parsed.n)
    ]
    description = f"{spec} ({split}): {len(items)} generated images"
    return ImageSource([name for name, _ in classes], items, description)


def render_item(spec: SyntheticSpec, split: str, name: str, index: int) -> Image.Image:
    """Image `index` of class `name`; module-level so that loaders pickle."""
    # one generator per image, keyed by its class name: the same "red star" image comes out of
    # color-shape and color-shape-base, and n only decides how many are drawn
    rng = np.random.default_rng([spec.seed, SPLITS.index(split), _name_key(name), index])
    constraints = _constraints(spec.task, name)
    style = cast(Style, _pick(rng, spec.style, STYLES))
    background = cast(Background, _pick(rng, spec.background, BACKGROUNDS))
    scene = sample_scene(rng, **constraints, style=style, background=background)
    # the shift draws after the scene, so a shifted image shows the unshifted one's scene
    image = render(scene, spec.size)
    if spec.halves.shift_on == "base" and name not in disjoint_halves(spec.classes)[0]:
        return image
    shifts = parse_shifts(spec.shift) + class_shifts(spec.halves.class_shift, name)
    return apply_shifts(shifts, image, rng)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")


def _constraints(task: str, name: str) -> dict[str, str]:
    if task == "shape":
        return {"shape": name}
    if task == "color":
        return {"colour": name}
    colour, shape = name.split(" ")
    return {"colour": colour, "shape": shape}


def _pick(rng: np.random.Generator, choice: str, values: tuple[str, ...]) -> str:
    if choice == "any":
        pool = values
    elif choice == "clean":
        pool = ("plain", "stripes")
    else:
        pool = (choice,)
    return pool[int(rng.integers(len(pool)))]


def _name_key(name: str) -> int:
    """A stable integer for a class name (Python's hash() is salted per process)."""
    return zlib.crc32(name.encode())
