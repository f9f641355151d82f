"""How much room a backbone leaves above zero-shot: zero-shot against a linear probe on the frozen,
normalised image embeddings of synthetic tasks (not a test; prints a table).

A text-side prompt method (coop, pre) can only move the class embeddings, so it is bounded by the
best linear classifier on the frozen image features; when zero-shot already equals that, no text
prompt can beat zero-shot by much.

    python bench/mini_linear_probe.py                     # the mini backbone, ~1 minute
    python bench/mini_linear_probe.py --backbone mini@other.safetensors --shots 16
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import Tensor

from promptserve.models.backbone import load_backbone
from promptserve.models.methods import Learner, create_method
from promptserve.models.preprocess import eval_transform
from promptserve.training.data import ImageDataset, make_loader, open_dataset

TASKS = (
    "color-shape-base",
    "color-shape-base?style=outline",
    "color-shape-base?background=noise",
    "color-shape-novel",
)


def features(learner: Learner, spec: str, split: str) -> tuple[Tensor, Tensor, list[str]]:
    source = open_dataset(spec, split=split)
    names = list(source.class_names)
    dataset = ImageDataset(source, eval_transform(learner.preprocess), names)
    embeddings, labels = [], []
    with torch.no_grad():
        for pixels, label in make_loader(dataset, 256, shuffle=False, seed=0):
            embeddings.append(learner.encode_images(pixels))
            labels.append(label)
    return torch.cat(embeddings), torch.cat(labels), names


def linear_probe(x: Tensor, y: Tensor, classes: int, steps: int = 800) -> torch.nn.Linear:
    torch.manual_seed(0)
    probe = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(probe(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="mini")
    parser.add_argument("--shots", type=int, default=64, help="probe training images per class")
    parser.add_argument("--test", type=int, default=32, help="test images per class")
    args = parser.parse_args()

    zeroshot = create_method("zeroshot", load_backbone(args.backbone))
    print(f"backbone {args.backbone}; probe on {args.shots} images per class; top-1 %")
    print(f"{'task':<36} {'zero-shot':>10} {'linear probe':>13}")
    for task in TASKS:
        sep = "&" if "?" in task else "?"
        x, y, names = features(zeroshot, f"synthetic:{task}{sep}n={args.shots}", "train")
        x_test, y_test, _ = features(zeroshot, f"synthetic:{task}{sep}n={args.test}", "test")
        probe = linear_probe(x, y, len(names))
        with torch.no_grad():
            classes = zeroshot.encode_classes(names)
            zs = (x_test @ classes.t()).argmax(1).eq(y_test).float().mean().item()
            lp = probe(x_test).argmax(1).eq(y_test).float().mean().item()
        print(f"{task:<36} {100 * zs:>10.1f} {100 * lp:>13.1f}")


if __name__ == "__main__":
    main()
