"""Captions of the synthetic world's scenes: varied templates naming colour and shape (or one
of them), and which captions are true of which scene (the label-aware targets of pretraining)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from promptserve.training.synthetic.world import WORDS, Background, Scene, Style

# {c} colour, {s} shape, {st} style word, {bg} background word; {a} is the article of what follows
BOTH_TEMPLATES = (
    "a photo of {a} {c} {s}.",
    "{a} {c} {s}",
    "an image of {a} {c} {s}",
    "a drawing of a {s} in {c}",
    "{a} {c} {st} {s}",
    "{a} {st} {c} {s}",
    "{a} {c} {s} on a {bg} background",
    "a picture of {a} {st} {c} {s} on a {bg} background",
)
SHAPE_TEMPLATES = ("a photo of a {s}.", "a {s}", "a {s} on a {bg} background", "{a} {st} {s}")
COLOUR_TEMPLATES = (
    "a photo of {a} {c}.",
    "something {c}",
    "a photo of something {c}.",
    "{a} {c} shape on a {bg} background",
)


@dataclass(frozen=True)
class Caption:
    """A caption and the attributes it commits to (None: not mentioned)."""

    text: str
    shape: str | None
    colour: str | None
    style: Style | None
    background: Background | None

    def matches(self, scene: Scene) -> bool:
        """Whether the caption is true of the scene (used for label-aware contrastive targets)."""
        return (
            self.shape in (None, scene.shape)
            and self.colour in (None, scene.colour)
            and self.style in (None, scene.style)
            and self.background in (None, scene.background)
        )


def caption_for(
    scene: Scene, rng: np.random.Generator, *, single_attribute: float = 0.0
) -> Caption:
    """A caption of the scene; with probability `single_attribute` it names shape or colour only."""
    u = rng.random()
    if u < single_attribute / 2:
        template = SHAPE_TEMPLATES[rng.integers(len(SHAPE_TEMPLATES))]
    elif u < single_attribute:
        template = COLOUR_TEMPLATES[rng.integers(len(COLOUR_TEMPLATES))]
    else:
        template = BOTH_TEMPLATES[rng.integers(len(BOTH_TEMPLATES))]
    return fill_template(template, scene)


def fill_template(template: str, scene: Scene) -> Caption:
    words = {
        "c": scene.colour,
        "s": scene.shape,
        "st": WORDS[scene.style],
        "bg": WORDS[scene.background],
    }
    text = template
    for key in ("st", "bg", "c", "s"):
        text = text.replace("{" + key + "}", words[key])
    while "{a}" in text:  # the article agrees with the word after it
        head, _, tail = text.partition("{a}")
        text = head + article(tail.lstrip()) + tail
    return Caption(
        text=text,
        shape=scene.shape if "{s}" in template else None,
        colour=scene.colour if "{c}" in template else None,
        style=scene.style if "{st}" in template else None,
        background=scene.background if "{bg}" in template else None,
    )


def article(following: str) -> str:
    return "an" if following[:1].lower() in set("aeiou") else "a"
