"""Added latency of open-vocabulary labels: encoding 1, 10 and 100 new labels per request.

For each backbone a CoOp classifier is exported (untrained: the text path costs the same), then
the service's LabelEncoder is timed: "first" is a request whose labels are all new (the text
path already loaded; its one-off load is reported apart), "cached" the same request again.

    .venv/bin/python bench/open_vocab_latency.py                     # mini
    .venv/bin/python bench/open_vocab_latency.py --backbone ViT-B-16 # random weights
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from promptserve.models.artifact import publish_classifier
from promptserve.models.backbone import load_backbone
from promptserve.models.classifier import load_classifier
from promptserve.models.labels import LabelEncoder
from promptserve.models.methods import create_method
from promptserve.training.synthetic.tasks import task_classes

COUNTS = (1, 10, 100)


def label_names(count: int, round_: int) -> list[str]:
    """`count` distinct names never seen before in this run."""
    return [f"thing {round_} {i}" for i in range(count)]


def run(backbone: str, method: str, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as store:
        learner = create_method(method, load_backbone(backbone))
        path = publish_classifier(learner, task_classes("color-shape-base"), Path(store), "bench")
        classifier = load_classifier(path)
        encoder = LabelEncoder()
        start = time.perf_counter()
        encoder.encode(classifier, ["warm-up"])
        load_ms = 1e3 * (time.perf_counter() - start)
        print(f"{backbone} {method}: text path load + 1 label {load_ms:.0f} ms")
        print("new labels | first request ms | cached ms")
        round_ = 0
        for count in COUNTS:
            first, cached = [], []
            for _ in range(repeats):
                round_ += 1
                names = label_names(count, round_)
                start = time.perf_counter()
                encoder.encode(classifier, names)
                first.append(time.perf_counter() - start)
                start = time.perf_counter()
                encoder.encode(classifier, names)
                cached.append(time.perf_counter() - start)
            print(f"{count:10d} | {1e3 * min(first):16.1f} | {1e3 * min(cached):9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", nargs="+", default=["mini"], help="e.g. mini ViT-B-16")
    parser.add_argument("--method", default="coop")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    for backbone in args.backbone:
        run(backbone, args.method, args.repeats)


if __name__ == "__main__":
    main()
