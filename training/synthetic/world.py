"""The synthetic shapes world: seeded coloured shapes on grey backgrounds (captions in `captions`).

Every image is described by a `Scene` (shape, colour, style, background and the jitter drawn for
them) and drawn by `render`, so a scene is reproducible from its parameters alone. `sample_scene`
draws one from a numpy generator; seeding that generator from ``(seed, ...)`` tuples makes every
image of a data set independent of how many others were drawn before it.

Backgrounds are grey on purpose, so a colour word always names the shape's colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from PIL import Image, ImageDraw

Style = Literal["filled", "outline"]
Background = Literal["plain", "noise", "stripes"]

SHAPES: tuple[str, ...] = (
    "circle",
    "cross",
    "heart",
    "hexagon",
    "ring",
    "square",
    "star",
    "triangle",
)
COLOURS: dict[str, tuple[int, int, int]] = {
    "blue": (35, 70, 225),
    "cyan": (30, 205, 225),
    "green": (40, 165, 55),
    "orange": (250, 135, 20),
    "pink": (250, 125, 195),
    "purple": (135, 45, 175),
    "red": (220, 30, 30),
    "yellow": (240, 215, 25),
}
STYLES: tuple[Style, ...] = get_args(Style)
BACKGROUNDS: tuple[Background, ...] = get_args(Background)
DEFAULT_SIZE = 64  # the mini backbone's input side
SUPERSAMPLE = 2  # drawn at 2x and downsampled, for antialiased edges
COLOUR_JITTER = 15  # per RGB channel
ROTATION_JITTER = 30.0  # degrees either way from upright: a heart stays a heart
RADIUS_RANGE = (0.17, 0.375)  # shape radius as a fraction of the image side (11-24 px at 64)
WORDS = {"filled": "solid", "outline": "outlined", "plain": "plain", "noise": "noisy"}
WORDS["stripes"] = "striped"


@dataclass(frozen=True, kw_only=True)
class Scene:
    """One image of the world, in image-size independent units."""

    shape: str
    colour: str
    style: Style
    background: Background
    radius: float  # fraction of the image side
    centre: tuple[float, float]  # fractions of the image side
    rotation: float  # degrees
    rgb: tuple[int, int, int]  # the jittered colour actually drawn
    tone: int  # background grey level
    stripe_period: float  # fraction of the image side
    stripe_angle: float  # degrees
    noise_seed: int


def sample_scene(
    rng: np.random.Generator,
    *,
    shape: str | None = None,
    colour: str | None = None,
    style: Style | None = None,
    background: Background | None = None,
) -> Scene:
    """Draw a scene; attributes left as None are drawn uniformly."""
    shape = shape if shape is not None else SHAPES[rng.integers(len(SHAPES))]
    colour = colour if colour is not None else list(COLOURS)[rng.integers(len(COLOURS))]
    style = style if style is not None else STYLES[rng.integers(len(STYLES))]
    background = background if background is not None else BACKGROUNDS[rng.integers(3)]
    if shape not in SHAPES or colour not in COLOURS:
        raise ValueError(f"unknown shape or colour: {shape!r}, {colour!r}")
    radius = float(rng.uniform(*RADIUS_RANGE))
    margin = radius + 0.02
    centre = (float(rng.uniform(margin, 1 - margin)), float(rng.uniform(margin, 1 - margin)))
    jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
    rgb = tuple(int(v) for v in np.clip(np.array(COLOURS[colour]) + jitter, 0, 255))
    light = bool(rng.random() < 0.5)
    tone = int(rng.integers(185, 240) if light else rng.integers(25, 75))
    return Scene(
        shape=shape,
        colour=colour,
        style=style,
        background=background,
        radius=radius,
        centre=centre,
        rotation=float(rng.uniform(-ROTATION_JITTER, ROTATION_JITTER)),
        rgb=(rgb[0], rgb[1], rgb[2]),
        tone=tone,
        stripe_period=float(rng.uniform(0.08, 0.2)),
        stripe_angle=float(rng.uniform(0, 180)),
        noise_seed=int(rng.integers(2**31)),
    )


def render(scene: Scene, size: int = DEFAULT_SIZE) -> Image.Image:
    """Draw a scene as an RGB image of `size` x `size` pixels."""
    side = size * SUPERSAMPLE
    canvas = Image.fromarray(_background(scene, side), "RGB")
    draw = ImageDraw.Draw(canvas)
    cx, cy = scene.centre[0] * side, scene.centre[1] * side
    r = scene.radius * side
    width = max(2, round(r * 0.16))  # outline stroke, supersampled pixels
    filled = scene.style == "filled"
    if scene.shape in {"circle", "ring"}:
        _draw_disc(draw, cx, cy, r, scene.rgb, filled, width)
        if scene.shape == "ring":  # a ring is a disc with a hole; outlined: two circles
            hole = 0.55 * r
            if filled:
                draw.ellipse((cx - hole, cy - hole, cx + hole, cy + hole), fill=_tone_rgb(scene))
                _paste_background(canvas, scene, side, (cx, cy, hole))
            else:
                _draw_disc(draw, cx, cy, hole, scene.rgb, False, width)
    else:
        points = _outline_points(scene.shape, cx, cy, r, scene.rotation)
        if filled:
            draw.polygon(points, fill=scene.rgb)
        else:
            draw.line([*points, points[0], points[1]], fill=scene.rgb, width=width, joint="curve")
    return canvas.resize((size, size), Image.Resampling.BOX)


def _background(scene: Scene, side: int) -> np.ndarray:
    """[side, side, 3] uint8 grey background."""
    if scene.background == "plain":
        grey = np.full((side, side), float(scene.tone))
    elif scene.background == "noise":
        noise = np.random.default_rng(scene.noise_seed).normal(0.0, 40.0, (side, side))
        grey = scene.tone + noise
    else:
        y, x = np.mgrid[0:side, 0:side] / side
        angle = np.deg2rad(scene.stripe_angle)
        phase = (x * np.cos(angle) + y * np.sin(angle)) / scene.stripe_period
        contrast = 45.0 if scene.tone > 128 else -45.0  # second stripe towards mid grey
        grey = scene.tone - contrast * (np.floor(phase) % 2)
    grey8 = np.clip(grey, 0, 255).astype(np.uint8)
    return np.repeat(grey8[:, :, None], 3, axis=2)


def _tone_rgb(scene: Scene) -> tuple[int, int, int]:
    return (scene.tone, scene.tone, scene.tone)


def _paste_background(
    canvas: Image.Image, scene: Scene, side: int, hole: tuple[float, float, float]
) -> None:
    """Show the textured background through a filled ring's hole."""
    if scene.background == "plain":
        return
    cx, cy, r = hole
    mask = Image.new("L", canvas.size, 0)
    ImageDraw.Draw(mask).ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    canvas.paste(Image.fromarray(_background(scene, side), "RGB"), (0, 0), mask)


def _draw_disc(
    draw: ImageDraw.ImageDraw,
    cx: float,
    cy: float,
    r: float,
    rgb: tuple[int, int, int],
    filled: bool,
    width: int,
) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if filled:
        draw.ellipse(box, fill=rgb)
    else:
        draw.ellipse(box, outline=rgb, width=width)


def _outline_points(
    shape: str, cx: float, cy: float, r: float, rotation: float
) -> list[tuple[float, float]]:
    """The polygon of a shape of radius ~1 around the origin, rotated, scaled and moved."""
    unit = _UNIT_SHAPES[shape]
    angle = np.deg2rad(rotation)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    xy = unit @ rot.T * r + np.array([cx, cy])
    return [(float(x), float(y)) for x, y in xy]


def _regular(n: int, phase: float = -np.pi / 2) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    t = -np.pi / 2 + np.pi * np.arange(2 * points) / points
    radius = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([np.cos(t) * radius, np.sin(t) * radius], axis=1)


def _cross(arm: float = 0.34) -> np.ndarray:
    a = arm
    pts = [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a)]
    return np.array([*pts, (-1, a), (-1, -a), (-a, -a)], dtype=float)


def _heart(n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    xy = np.stack([x, y + 2.5], axis=1)
    return np.asarray(xy / np.abs(xy).max(), dtype=float)


_UNIT_SHAPES: dict[str, np.ndarray] = {
    "cross": _cross(),
    "heart": _heart(),
    "hexagon": _regular(6),
    "square": _regular(4, np.pi / 4) * np.sqrt(2) * 0.8,
    "star": _star(),
    "triangle": _regular(3),
}
