"""Appearance shifts and renamed classes: downstream data sets the mini backbone has not mastered.

A shift is a parametrised image transform written ``<kind><amount>``; several apply in order
when joined with ``+`` (``hue25+lowres24``). The amount is optional where a kind has a default.

  ``hue<deg>``        rotate every hue by ``deg`` degrees (any real number)
  ``sepia<pct>``      blend ``pct`` % of the way to a sepia tint (default 100)
  ``cast<pct>``       a warm orange colour cast of strength ``pct`` % (default 50)
  ``desat<pct>``      remove ``pct`` % of the saturation (default 100: grey)
  ``contrast<pct>``   keep ``pct`` % of the contrast around mid grey (1-100)
  ``lowres<px>``      down to ``px`` x ``px`` pixels and back up (nearest neighbour)
  ``blur<px>``        Gaussian blur of radius ``px``
  ``noise<sigma>``    Gaussian pixel noise of standard deviation ``sigma`` grey levels
  ``clutter<n>``      ``n`` small distractor blobs in random colours (default 4)
  ``invert<pct>``     blend ``pct`` % of the way to the negative (default 100)

Random kinds (``noise``, ``clutter``) draw from the image's own generator, so a data set stays
deterministic. Class names can be replaced by ones the backbone never read in pretraining
(``names=synonym``: "crimson pentagram"; ``names=catalogue``: "item r7").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from promptserve.training.errors import DataError

Transform = Callable[[Image.Image, float, np.random.Generator], Image.Image]
_SHIFT = re.compile(r"^([a-z]+)(-?\d+(?:\.\d+)?)?$")


@dataclass(frozen=True)
class ShiftKind:
    transform: Transform
    default: float | None  # None: the amount is required
    low: float  # valid amounts, inclusive
    high: float


@dataclass(frozen=True)
class Shift:
    kind: str
    amount: float

    def apply(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        return KINDS[self.kind].transform(image.convert("RGB"), self.amount, rng)

    def __str__(self) -> str:
        return f"{self.kind}{self.amount:g}"


def _array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


def _image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def _hue(image: Image.Image, degrees: float, rng: np.random.Generator) -> Image.Image:
    hsv = np.asarray(image.convert("HSV"), dtype=np.int32)
    turn = round(degrees / 360.0 * 256) % 256
    hsv[..., 0] = (hsv[..., 0] + turn) % 256
    return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")


SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])


def _sepia(image: Image.Image, percent: float, rng: np.random.Generator) -> Image.Image:
    pixels = _array(image)
    toned = pixels @ SEPIA.T.astype(np.float32)
    return _image(pixels + percent / 100.0 * (toned - pixels))


def _cast(image: Image.Image, percent: float, rng: np.random.Generator) -> Image.Image:
    warm = np.array([255.0, 140.0, 40.0], dtype=np.float32)
    grey = _array(image).mean(axis=2, keepdims=True) / 255.0
    return _image(_array(image) * (1 - percent / 100.0) + percent / 100.0 * warm * grey * 1.2)


def _desaturate(image: Image.Image, percent: float, rng: np.random.Generator) -> Image.Image:
    pixels = _array(image)
    grey = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return _image(pixels + percent / 100.0 * (grey[..., None] - pixels))


def _contrast(image: Image.Image, percent: float, rng: np.random.Generator) -> Image.Image:
    return _image(128.0 + (_array(image) - 128.0) * percent / 100.0)


def _lowres(image: Image.Image, side: float, rng: np.random.Generator) -> Image.Image:
    small = image.resize((int(side), int(side)), Image.Resampling.BOX)
    return small.resize(image.size, Image.Resampling.NEAREST)


def _blur(image: Image.Image, radius: float, rng: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius))


def _noise(image: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    return _image(_array(image) + rng.normal(0.0, sigma, size=_array(image).shape))


def _clutter(image: Image.Image, count: float, rng: np.random.Generator) -> Image.Image:
    out = image.copy()
    draw = ImageDraw.Draw(out)
    side = image.size[0]
    for _ in range(int(count)):
        r = side * float(rng.uniform(0.03, 0.07))
        x, y = (float(v) for v in rng.uniform(0, side, size=2))
        rgb = tuple(int(v) for v in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=rgb)
        else:
            angle = float(rng.uniform(0, np.pi))
            dx, dy = 2 * r * np.cos(angle), 2 * r * np.sin(angle)
            draw.line((x - dx, y - dy, x + dx, y + dy), fill=rgb, width=max(1, round(r / 2)))
    return out


def _invert(image: Image.Image, percent: float, rng: np.random.Generator) -> Image.Image:
    pixels = _array(image)
    return _image(pixels + percent / 100.0 * (255.0 - 2 * pixels))


KINDS: dict[str, ShiftKind] = {
    "hue": ShiftKind(_hue, None, -360.0, 360.0),
    "sepia": ShiftKind(_sepia, 100.0, 0.0, 100.0),
    "cast": ShiftKind(_cast, 50.0, 0.0, 100.0),
    "desat": ShiftKind(_desaturate, 100.0, 0.0, 100.0),
    "contrast": ShiftKind(_contrast, None, 1.0, 100.0),
    "lowres": ShiftKind(_lowres, None, 2.0, 4096.0),
    "blur": ShiftKind(_blur, None, 0.0, 64.0),
    "noise": ShiftKind(_noise, None, 0.0, 255.0),
    "clutter": ShiftKind(_clutter, 4.0, 0.0, 200.0),
    "invert": ShiftKind(_invert, 100.0, 0.0, 100.0),
}


def parse_shifts(text: str) -> tuple[Shift, ...]:
    """``"hue25+lowres24"`` -> (Shift("hue", 25), Shift("lowres", 24)); "" or "none" -> ()."""
    if text in ("", "none"):
        return ()
    shifts = []
    for part in re.split(r"[+ ]", text):  # a query string reads "+" as a space
        match = _SHIFT.match(part.strip())
        kind = match.group(1) if match else ""
        if kind not in KINDS:
            raise DataError(
                f"unknown shift {part!r} in {text!r}; a shift is <kind><amount>, joined with '+', "
                f"kinds: {', '.join(KINDS)}"
            )
        spec = KINDS[kind]
        raw = match.group(2) if match else None
        if raw is None and spec.default is None:
            raise DataError(f"shift {kind!r} needs an amount, e.g. {kind}{spec.high / 4:g}")
        amount = float(raw) if raw is not None else float(spec.default or 0.0)
        if not spec.low <= amount <= spec.high:
            raise DataError(f"shift {kind} amount must be in [{spec.low:g}, {spec.high:g}]")
        shifts.append(Shift(kind, amount))
    return tuple(shifts)


def apply_shifts(
    shifts: tuple[Shift, ...], image: Image.Image, rng: np.random.Generator
) -> Image.Image:
    for shift in shifts:
        image = shift.apply(image, rng)
    return image


# -- class names the backbone never read ---------------------------------------------------------

NAMINGS = ("plain", "synonym", "catalogue")
SYNONYMS = {
    "blue": "cobalt",
    "cyan": "turquoise",
    "green": "emerald",
    "orange": "tangerine",
    "pink": "rose",
    "purple": "violet",
    "red": "crimson",
    "yellow": "amber",
    "circle": "disc",
    "cross": "plus",
    "heart": "valentine",
    "hexagon": "honeycomb",
    "ring": "donut",
    "square": "tile",
    "star": "pentagram",
    "triangle": "wedge",
}
# catalogue codes: one letter per colour, one digit per shape, as a parts list would have them
CATALOGUE = {
    "blue": "b",
    "cyan": "q",
    "green": "g",
    "orange": "o",
    "pink": "k",
    "purple": "p",
    "red": "r",
    "yellow": "y",
    "circle": "1",
    "cross": "2",
    "heart": "3",
    "hexagon": "4",
    "ring": "5",
    "square": "6",
    "star": "7",
    "triangle": "8",
}


def rename(name: str, naming: str) -> str:
    """A world class name ("red star", "star", "red") under a naming scheme."""
    if naming == "plain":
        return name
    words = name.split(" ")
    if naming == "synonym":
        return " ".join(SYNONYMS[word] for word in words)
    if naming == "catalogue":
        return "item " + "".join(CATALOGUE[word] for word in words)
    raise DataError(f"names must be one of {NAMINGS}, got {naming!r}")
