"""Test helpers: class names, seeded pixels, perturbed learners, small deterministic image
datasets and short training runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from promptserve.models.backbone import Backbone, PreprocessConfig
from promptserve.models.methods import Learner, create_method, get_method, list_methods
from promptserve.models.methods.config import config_fields
from promptserve.models.towers import VisionTower

NAMES = ["red star", "blue circle", "green square", "yellow heart"]  # a label set for learners
# options that change what a method learns, held to the method contract as cases of their own
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {"coop-csc": ("coop", {"csc": True})}


def method_cases() -> list[str]:
    """Every registered method and every variant in `VARIANTS`."""
    return [*list_methods(), *VARIANTS]


def create_learner(
    case: str,
    backbone: Backbone,
    names: list[str] = NAMES,
    config: dict[str, object] | None = None,
) -> Learner:
    """A fresh learner of a method or variant; one whose config holds its training classes
    (``classnames``) is given `names`, as training gives it the data's class names."""
    method, options = VARIANTS.get(case, (case, {}))
    values = {**options, **(config or {})}
    if "classnames" in config_fields(get_method(method).config_cls):
        values.setdefault("classnames", tuple(names))
    return create_method(method, backbone, values)


def pixels(batch: int, size: int = 32, seed: int = 0) -> Tensor:
    """Seeded standard-normal pixels [batch, 3, size, size] (normalised images are ~N(0, 1))."""
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def reference_encode(tower: VisionTower, pixels: Tensor) -> Tensor:
    """open_clip's own pooled image feature [B, D], for parity checks against a prompted tower."""
    return cast(Tensor, tower.visual(pixels))


def perturb(learner: Learner, seed: int = 1, scale: float = 0.05) -> None:
    """Move every learned tensor off its initial value, as training would, so that round trips
    and folded graphs test something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in learner.trainable_parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator).to(param))


@contextmanager
def vision_block_io(learner: Learner) -> Iterator[tuple[list[Tensor], list[Tensor]]]:
    """Capture the input and the output of every vision block call, in call order, straight
    from hooks on the learner's frozen blocks."""
    inputs: list[Tensor] = []
    outputs: list[Tensor] = []

    def record(_module: object, args: tuple[Tensor, ...], out: Tensor) -> None:
        inputs.append(args[0].detach())
        outputs.append(out.detach())

    handles = [block.register_forward_hook(record) for block in learner.vision.tower.blocks]
    try:
        yield inputs, outputs
    finally:
        for handle in handles:
            handle.remove()


def make_image_folder(
    root: Path,
    classes: dict[str, tuple[int, int, int]],
    per_class: int,
    size: int = 48,
    seed: int = 0,
) -> Path:
    """Write `root/<class name>/img_<i>.png`: a filled shape in the class colour on a light,
    noisy background, at a jittered position and size. Classes differ by colour only (discs
    and squares alternate within every class), so they are separable by colour. Deterministic
    from `seed`; returns `root`.
    """
    rng = np.random.default_rng(seed)
    for name in sorted(classes):
        class_dir = root / name
        class_dir.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = _draw_shape(rng, classes[name], size, disc=i % 2 == 0)
            image.save(class_dir / f"img_{i}.png")
    return root


def _draw_shape(
    rng: np.random.Generator, colour: tuple[int, int, int], size: int, *, disc: bool
) -> Image.Image:
    level = int(rng.integers(190, 250))  # grey to near-white background
    image = Image.new("RGB", (size, size), (level, level, level))
    # a large shape, so colour dominates even a random-init backbone's image features
    radius = size * float(rng.uniform(0.32, 0.42))
    cx, cy = (size / 2 + rng.uniform(-0.1, 0.1, size=2) * size).tolist()
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    draw = ImageDraw.Draw(image)
    if disc:
        draw.ellipse(box, fill=colour)
    else:
        draw.rectangle(box, fill=colour)
    pixels = np.asarray(image, dtype=np.float32)
    pixels += rng.normal(0.0, 6.0, size=pixels.shape)  # sensor-like noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def synthetic_tensors(
    preprocess: PreprocessConfig, shots: int = 4
) -> tuple[Tensor, Tensor, list[str]]:
    """`shots` images per base class of the colour-shape task at the backbone's size, as one
    eval-transformed batch [N, 3, S, S] with labels [N] and the class names."""
    from promptserve.models.preprocess import eval_transform
    from promptserve.training.data import ImageDataset, open_dataset, sample_few_shot

    spec = f"synthetic:color-shape-base?n={shots}&size={preprocess.size}"
    source = sample_few_shot(open_dataset(spec, split="train"), shots, 1)
    dataset = ImageDataset(source, eval_transform(preprocess), list(source.class_names))
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([image for image, _ in items])
    return images, torch.tensor([label for _, label in items]), list(source.class_names)


def tiny_run_losses(method: str, store: Path, epochs: int = 3) -> list[float]:
    """Per-epoch losses of `method` trained on 4 shots of the synthetic base task, tiny backbone."""
    from promptserve.training.api import TrainRequest, fit_learner

    request = TrainRequest(
        method=method,
        data="synthetic:color-shape-base?n=4&seed=1&size=32",
        store=store,
        name=method,
        backbone="tiny",
        shots=4,
        seed=1,
        overrides={
            "epochs": epochs,
            "batch_size": 32,
            "optimizer": "adam",
            "lr": 0.01,
            "warmup_epochs": 0,
        },
    )
    return fit_learner(request).result.losses
