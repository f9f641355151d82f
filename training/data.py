"""Datasets for training and evaluation: open a data spec, sample few shots, load batches.

`open_dataset` turns a spec string (what the CLI and the service receive) into an
`ImageSource`; `sample_few_shot`, `restrict_classes` and `split_base_novel` derive the sources the
paper protocols need; `ImageDataset` and `make_loader` turn a source into tensors for the loop.
The readers themselves live in `training.sources`.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from promptserve.models.methods.config import MINI_RECIPE
from promptserve.models.preprocess import ImageTransform
from promptserve.training.benchmarks import benchmark_for_split_file, detect_benchmark
from promptserve.training.errors import DataError
from promptserve.training.layouts import find_dassl_split, read_dassl_split
from promptserve.training.sources import (
    SPLITS,
    ImageSource,
    LabeledImage,
    from_memory,
    read_image_folder,
    read_manifest,
)
from promptserve.training.synthetic.tasks import open_synthetic

__all__ = [
    "ImageDataset",
    "ImageSource",
    "LabeledImage",
    "from_memory",
    "make_loader",
    "open_dataset",
    "restrict_classes",
    "sample_few_shot",
    "split_base_novel",
]

log = logging.getLogger(__name__)

SYNTHETIC_PREFIX = "synthetic:"
ACCEPTED_SPECS = (
    "an image folder DIR/<class name>/*.jpg (optionally with DIR/train and DIR/test)",
    "a CSV manifest FILE.csv with the header 'path,label'",
    'a JSONL manifest FILE.jsonl with one {"path": ..., "label": ...} per line',
    "a CoOp/Dassl dataset root holding split_zhou_<Name>.json (or that file itself)",
    "a benchmark data set folder in CoOp's DATASETS.md layout ($DATA/imagenet, $DATA/dtd, ...)",
    "synthetic:<task> for the synthetic shapes world",
)
# The synthetic world keeps the recipe the `mini` presets were tuned with: a gentler crop for
# its 64-pixel shapes, the per-step cosine and the last partial batch. Presets and explicit
# overrides still win; real data gets the method configs' defaults (Dassl's recipe).
SYNTHETIC_RECIPE = MINI_RECIPE


def open_dataset(spec: str, *, split: str = "train") -> ImageSource:
    """Open the `split` ("train", "val" or "test") of the dataset a spec names.

    Image folders without `train/` and `test/` subfolders and manifests have a single split, so
    `split` does not apply to them. Specs starting with ``synthetic:`` are delegated to
    `training.synthetic.open_synthetic(spec, split)` when that module provides it.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if spec.startswith(SYNTHETIC_PREFIX):
        return replace(open_synthetic(spec, split), recipe=SYNTHETIC_RECIPE)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _open_directory(path, split)
    if path.suffix.lower() in {".csv", ".jsonl"}:
        return read_manifest(path)
    if path.name.startswith("split_zhou_") and path.suffix == ".json" and path.is_file():
        entry = benchmark_for_split_file(path)
        return entry.open(path.parent, split) if entry else read_dassl_split(path, split)
    reason = "no such file or directory" if not path.exists() else "not a dataset this reads"
    forms = "".join(f"\n  - {form}" for form in ACCEPTED_SPECS)
    raise DataError(f"cannot open dataset {spec!r} ({reason}); expected one of:{forms}")


def _open_directory(path: Path, split: str) -> ImageSource:
    entry = detect_benchmark(path)
    if entry is not None:
        return entry.open(path, split)
    split_file = find_dassl_split(path)
    if split_file is not None:
        return read_dassl_split(split_file, split)
    if (path / "train").is_dir() and (path / "test").is_dir():
        if not (path / split).is_dir():
            raise DataError(f"{path} has train/ and test/ folders but no {split}/ folder")
        return read_image_folder(path / split)
    return read_image_folder(path)


def sample_few_shot(
    source: ImageSource, shots: int, seed: int, *, quiet: bool = False
) -> ImageSource:
    """`shots` images per class, drawn by one `random.Random(seed)` class after class.

    A source read from a CoOp/Dassl list file (`ImageSource.dassl_order`) is drawn as Dassl's
    ``generate_fewshot_dataset`` does after ``set_random_seed(seed)``: the classes in the order
    they first occur in the file, each class's images in file order, ``random.sample`` per class,
    and a class with fewer images filled up by ``random.choices`` (so repeating some). The images
    are then those of CoOp's ``split_fewshot/shot_<shots>-seed_<seed>.pkl``; CoOp draws its val
    shots after these, so they do not change them. Any other source is drawn in label order from
    each class's images sorted by `LabeledImage.key` (independent of the order files were listed
    in), and a class with fewer images keeps all of them. Either warns about such a class unless
    `quiet`.
    """
    if shots <= 0:
        raise DataError(f"shots must be a positive number of images per class, got {shots}")
    rng = random.Random(seed)
    groups = _in_file_order(source) if source.dassl_order else source.by_class()
    chosen: list[LabeledImage] = []
    for name, items in groups.items():
        if len(items) >= shots:
            chosen.extend(rng.sample(items, shots))
            continue
        if not quiet:
            log.warning(
                "class %r has %d images, fewer than %d shots: %s",
                name,
                len(items),
                shots,
                "repeating some, as Dassl does" if source.dassl_order else "using all",
            )
        chosen.extend(rng.choices(items, k=shots) if source.dassl_order else items)
    description = f"{source.description}, {shots} shots (seed {seed})"
    return replace(source, items=chosen, description=description)


def _in_file_order(source: ImageSource) -> dict[str, list[LabeledImage]]:
    """Items grouped by class as Dassl's ``split_dataset_by_label``: classes in the order they
    first occur, items in source order; classes without images are absent."""
    groups: dict[str, list[LabeledImage]] = {}
    for item in source.items:
        groups.setdefault(item.label, []).append(item)
    return groups


def split_base_novel(class_names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Base-to-novel protocol, as Dassl's ``subsample_classes``: with the classes in label order
    (an `ImageSource`'s `class_names`), base = the first ceil(n / 2), novel = the rest."""
    names = list(class_names)
    if len(set(names)) != len(names):
        raise DataError("class names must be unique to split them into base and novel")
    cut = math.ceil(len(names) / 2)
    return names[:cut], names[cut:]


def restrict_classes(source: ImageSource, names: Iterable[str]) -> ImageSource:
    """Keep only the images of `names`; labels stay names, classes keep the source's order."""
    wanted = set(names)
    unknown = sorted(wanted - set(source.class_names))
    if unknown:
        raise DataError(f"classes not in {source.description or 'the dataset'}: {unknown[:10]}")
    keep = [name for name in source.class_names if name in wanted]
    items = [item for item in source.items if item.label in wanted]
    return replace(source, class_names=keep, items=items)


class ImageDataset(Dataset[tuple[Tensor, int]]):
    """An `ImageSource` as (pixels [3, S, S], label index into `class_names`) pairs."""

    def __init__(
        self,
        source: ImageSource,
        transform: ImageTransform,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.items = list(source.items)
        self.transform = transform
        self.class_names = list(source.class_names if class_names is None else class_names)
        index = {name: i for i, name in enumerate(self.class_names)}
        if len(index) != len(self.class_names):
            raise DataError("class names of a dataset must be unique")
        unknown = sorted({item.label for item in self.items} - index.keys())
        if unknown:
            raise DataError(f"images labelled with classes outside the label set: {unknown[:10]}")
        self.targets = [index[item.label] for item in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.transform(self.items[i].open_rgb()), self.targets[i]


def make_loader(
    dataset: Dataset[tuple[Tensor, int]],
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader[tuple[Tensor, int]]:
    """Batches of (pixels [B, 3, S, S], labels [B]) in an order fixed by `seed`.

    The shuffle order comes from the loader's own generator. Random augmentations draw from the
    global torch RNG in the main process (seeded by the training loop) or, with workers, from
    per-worker seeds that DataLoader derives from the same generator. `drop_last` drops the
    last partial batch only when there is at least one full batch (Dassl's rule).
    """
    if batch_size <= 0:
        raise DataError(f"batch size must be positive, got {batch_size}")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        drop_last=drop_last and len(dataset) >= batch_size,  # type: ignore[arg-type]
    )
