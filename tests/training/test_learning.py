"""Real learning on the embedded mini backbone: every trainable method beats zero-shot where the
backbone leaves room.

On mini's own world zero-shot is already the best linear classifier on the frozen features
(bench/mini_linear_probe.py), so the methods are tested on a shifted downstream set instead: the
same classes with every hue rotated by 50 degrees, where zero-shot falls to about half and a
linear probe on the frozen features still reaches over 90 % (bench/suite.py, the Hue50 row).
Each method trains with its `mini` preset on 16 shots of 6 base classes and must beat zero-shot
on the base classes' unseen test images by at least 10 points.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import Tensor

from promptserve.models.backbone import load_backbone
from promptserve.models.methods import create_method, get_method, list_methods
from promptserve.models.preprocess import eval_transform
from promptserve.training.api import TrainRequest, fit_learner
from promptserve.training.data import (
    ImageDataset,
    make_loader,
    open_dataset,
    restrict_classes,
    split_base_novel,
)
from promptserve.training.loop import evaluate

SHIFTED = "synthetic:color-shape?shift=hue50&classes=12&seed=5"
MARGIN = 10.0  # points over zero-shot on the base classes
Batches = list[tuple[Tensor, Tensor]]


@pytest.fixture(scope="module")
def base_test() -> tuple[list[str], Batches, float]:
    """The base classes, their test images (24 per class) and zero-shot accuracy on them."""
    backbone = load_backbone("mini")
    source = open_dataset(f"{SHIFTED}&n=24", split="test")
    base, _ = split_base_novel(source.class_names)
    dataset = ImageDataset(restrict_classes(source, base), eval_transform(backbone.preprocess))
    batches = list(make_loader(dataset, 256, shuffle=False, seed=0))
    zeroshot = evaluate(create_method("zeroshot", backbone), batches, base)
    assert zeroshot < 100 - MARGIN, "the shifted set leaves no room: pick a harder shift"
    return base, batches, zeroshot


TRAINABLE = [m for m in list_methods() if m != "zeroshot"]


@pytest.mark.slow
@pytest.mark.parametrize("method", TRAINABLE)
def test_the_mini_preset_beats_zero_shot_on_a_shifted_set(
    method: str, base_test: tuple[list[str], Batches, float]
) -> None:
    assert "mini" in get_method(method).presets
    base, batches, zeroshot = base_test
    train = restrict_classes(open_dataset(f"{SHIFTED}&n=16", split="train"), base)
    request = TrainRequest(
        method=method, data=SHIFTED, store=Path("unused"), name=method, shots=16, seed=1,
        preset="mini",
    )  # fmt: skip
    fitted = fit_learner(request, source=train)
    tuned = evaluate(fitted.learner, batches, base)
    assert tuned >= zeroshot + MARGIN, f"{method}: {tuned:.1f} vs zero-shot {zeroshot:.1f}"
