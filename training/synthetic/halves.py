"""Base and novel halves in the papers' regime: a pick whose halves share no word, shifts that
differ per class, and shifts or names that touch the base half only.

``pick=disjoint`` draws base classes from four colours and four shapes and novel classes from the
other four of each, so nothing a prompt learns about a base word is reused on novel:

  base   red, yellow, cyan, purple  x  circle, cross, square, star
  novel  orange, green, blue, pink  x  heart, hexagon, ring, triangle

(colours alternate around the hue circle, so both halves span it). Each half lists its 16
pairs as colour i with shape (i + k) mod 4, k-major, and keeps the first ``classes / 2``: with
``classes=16`` every colour of a half comes in two shapes and every shape in two colours. The
label order is the base half, then the novel half (each sorted by its shown name), so the
protocol's split (the first half in label order) is this one however the classes are named.

``class_shift`` applies a shift with a per-class amount: the class's world name seeds a factor
in [0.5, 1] (and a sign, for ``hue``, whose amounts run both ways), so ``class_shift=hue40``
turns one class by +23 degrees and another by -37, and no shared correction undoes them.

``shift_on=base`` applies ``shift`` and ``class_shift`` to base classes only (novel images stay
as drawn); ``names_on=base`` renames base classes only (unfamiliar base names, familiar novel
ones, as with Aircraft). Both need ``pick=disjoint``, which fixes what the base half is.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from promptserve.training.errors import DataError
from promptserve.training.synthetic.shifts import KINDS, Shift, parse_shifts

PICKS = ("random", "disjoint")  # random: a fixed pseudo-random pick per count (the suite's)
SCOPES = ("all", "base")
BASE_COLOURS = ("red", "yellow", "cyan", "purple")
NOVEL_COLOURS = ("orange", "green", "blue", "pink")
BASE_SHAPES = ("circle", "cross", "square", "star")
NOVEL_SHAPES = ("heart", "hexagon", "ring", "triangle")
HALF_PAIRS = len(BASE_COLOURS) * len(BASE_SHAPES)  # 16 classes per half at most
CLASS_SALT = 0x5EED  # keeps the per-class factor apart from other uses of the name's key


@dataclass(frozen=True, kw_only=True)
class HalfOptions:
    """The spec options of this module, parsed and checked against each other."""

    pick: str = "random"  # one of PICKS
    class_shift: str = ""  # a shift whose amount is scaled per class
    shift_on: str = "all"  # which classes `shift` and `class_shift` touch (SCOPES)
    names_on: str = "all"  # which classes `names` renames (SCOPES)


OPTION_KEYS = ("pick", "class_shift", "shift_on", "names_on")


def parse_half_options(options: dict[str, str], task: str, classes: int | None) -> HalfOptions:
    """The options of this module from a spec's query; DataError names what is wrong."""
    parsed = HalfOptions(
        pick=options.get("pick", "random"),
        class_shift=options.get("class_shift", ""),
        shift_on=options.get("shift_on", "all"),
        names_on=options.get("names_on", "all"),
    )
    if parsed.pick not in PICKS:
        raise DataError(f"pick must be one of {PICKS}, got {parsed.pick!r}")
    for key, value in (("shift_on", parsed.shift_on), ("names_on", parsed.names_on)):
        if value not in SCOPES:
            raise DataError(f"{key} must be one of {SCOPES}, got {value!r}")
        if value == "base" and parsed.pick != "disjoint":
            raise DataError(f"{key}=base needs pick=disjoint, which fixes the base half")
    parse_shifts(parsed.class_shift)  # validates the shift
    if parsed.pick == "disjoint":
        if task != "color-shape":
            raise DataError(f"pick=disjoint applies to the color-shape task, not {task}")
        if classes is not None and (classes % 2 or classes > 2 * HALF_PAIRS):
            raise DataError(f"pick=disjoint takes an even number of classes up to {2 * HALF_PAIRS}")
    return parsed


def disjoint_halves(classes: int | None) -> tuple[list[str], list[str]]:
    """World names of the base and novel halves of ``pick=disjoint`` (all 32 when None)."""
    per_half = HALF_PAIRS if classes is None else classes // 2

    def half(colours: tuple[str, ...], shapes: tuple[str, ...]) -> list[str]:
        pairs = [
            f"{colours[i]} {shapes[(i + k) % len(shapes)]}"
            for k in range(len(shapes))
            for i in range(len(colours))
        ]
        return pairs[:per_half]

    return half(BASE_COLOURS, BASE_SHAPES), half(NOVEL_COLOURS, NOVEL_SHAPES)


def class_shifts(text: str, name: str) -> tuple[Shift, ...]:
    """The shifts of `text` with amounts scaled by class `name`'s own factor (see above)."""
    rng = np.random.default_rng([CLASS_SALT, zlib.crc32(name.encode())])
    scaled = []
    for shift in parse_shifts(text):
        factor = float(rng.uniform(0.5, 1.0))
        sign = -1.0 if KINDS[shift.kind].low < 0 and rng.random() < 0.5 else 1.0
        scaled.append(Shift(shift.kind, sign * factor * shift.amount))
    return tuple(scaled)
