"""The benchmark data sets of the CoOp/CoCoOp protocols, read from CoOp's DATASETS.md tree.

Eleven data sets for base-to-novel, few-shot and cross-data-set transfer, and four ImageNet
variants for domain generalisation (test only; -A and -R hold a 200-class subset). Each entry
knows its folder under the data root, the files that identify its layout, how its integer labels
and class names are read, and its hand-crafted prompt template (CoOp's per-data-set templates).

Every reader returns the classes in label order (what Dassl's base/novel split cuts), with ``_``
in class names read as a space, as all four releases prompt with them. `open_dataset` recognises
these layouts by their files, so ``--data $DATA/oxford_pets`` and ``--dataset OxfordPets
--data-root $DATA`` open the same thing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path

from promptserve.training.errors import DataError
from promptserve.training.layouts import (
    Reader,
    read_aircraft,
    read_imagenet,
    read_imagenet_v2,
    split_file_reader,
    wnid_variant_reader,
)
from promptserve.training.sources import ImageSource

PLAIN = "a photo of a {}."


@dataclass(frozen=True)
class Benchmark:
    """One data set of the protocols and how to read it."""

    name: str  # Dassl's registry name
    folder: str  # its folder under the data root
    template: str  # CoOp's hand-crafted prompt for it
    layout: str  # what the folder holds, as in CoOp's DATASETS.md
    reader: Reader
    requires: tuple[str, ...]  # paths (relative to the folder) that identify the layout
    excludes: tuple[str, ...] = ()  # paths whose presence means another layout
    aliases: tuple[str, ...] = ()
    test_only: bool = False  # the ImageNet variants are evaluation sets

    def matches(self, folder: Path) -> bool:
        return all((folder / p).exists() for p in self.requires) and not any(
            (folder / p).exists() for p in self.excludes
        )

    def open(self, folder: Path, split: str) -> ImageSource:
        """The `split` of this data set stored in `folder`, with its template attached."""
        if self.test_only and split != "test":
            raise DataError(f"{self.name} is a test-only data set; it has no {split!r} split")
        if not self.matches(folder):
            raise DataError(self.layout_error(folder))
        source = self.reader(folder, split)
        return replace(
            source,
            template=self.template,
            dataset=self.name,
            description=f"{self.name} {folder} [{split}]",
        )

    def layout_error(self, folder: Path) -> str:
        missing = [p for p in self.requires if not (folder / p).exists()]
        return (
            f"{folder} is not {self.name} in CoOp's DATASETS.md layout ({self.layout}); "
            f"missing: {', '.join(missing) or 'nothing, but ' + ', '.join(self.excludes)}"
        )


def _split_entry(
    name: str, folder: str, split_name: str, image_dir: str, template: str, *aliases: str
) -> Benchmark:
    split_file = f"split_zhou_{split_name}.json"
    return Benchmark(
        name=name,
        folder=folder,
        template=template,
        layout=f"{split_file} and the images under {image_dir}/",
        reader=split_file_reader(split_file, image_dir),
        requires=(split_file,),
        aliases=aliases,
    )


def _variant_entry(
    name: str, folder: str, image_dir: str, alias: str, layout: str, reader: Reader | None = None
) -> Benchmark:
    return Benchmark(
        name=name,
        folder=folder,
        template=PLAIN,
        layout=f"ImageNet's classnames.txt and {layout}",
        reader=reader or wnid_variant_reader(image_dir),
        requires=("classnames.txt", image_dir),
        aliases=(alias,),
        test_only=True,
    )


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        name="ImageNet",
        folder="imagenet",
        template=PLAIN,
        layout="classnames.txt and images/train/<wnid>/, images/val/<wnid>/ (val is the test set)",
        reader=read_imagenet,
        requires=("classnames.txt", "images/val"),
    ),
    _split_entry("Caltech101", "caltech-101", "Caltech101", "101_ObjectCategories", PLAIN),
    _split_entry(
        "OxfordPets", "oxford_pets", "OxfordPets", "images", "a photo of a {}, a type of pet."
    ),
    _split_entry("StanfordCars", "stanford_cars", "StanfordCars", ".", PLAIN),
    _split_entry(
        "OxfordFlowers",
        "oxford_flowers",
        "OxfordFlowers",
        "jpg",
        "a photo of a {}, a type of flower.",
        "Flowers102",
    ),
    _split_entry("Food101", "food-101", "Food101", "images", "a photo of {}, a type of food."),
    Benchmark(
        name="FGVCAircraft",
        folder="fgvc_aircraft",
        template="a photo of a {}, a type of aircraft.",
        layout="variants.txt, images_variant_{train,val,test}.txt and images/<id>.jpg",
        reader=read_aircraft,
        requires=("variants.txt",),
        aliases=("Aircraft",),
    ),
    _split_entry("SUN397", "sun397", "SUN397", "SUN397", PLAIN),
    _split_entry(
        "DescribableTextures", "dtd", "DescribableTextures", "images", "{} texture.", "DTD"
    ),
    _split_entry("EuroSAT", "eurosat", "EuroSAT", "2750", "a centered satellite photo of {}."),
    _split_entry(
        "UCF101",
        "ucf101",
        "UCF101",
        "UCF-101-midframes",
        "a photo of a person doing {}.",
    ),
    _variant_entry(
        "ImageNetV2",
        "imagenetv2",
        "imagenetv2-matched-frequency-format-val",
        "ImageNet-V2",
        "imagenetv2-matched-frequency-format-val/<label>/",
        read_imagenet_v2,
    ),
    Benchmark(
        name="ImageNetSketch",
        folder="imagenet-sketch",
        template=PLAIN,
        layout="ImageNet's classnames.txt and images/<wnid>/",
        reader=wnid_variant_reader("images"),
        requires=("classnames.txt", "images"),
        excludes=("images/val", "images/train"),
        aliases=("ImageNet-Sketch",),
        test_only=True,
    ),
    _variant_entry(
        "ImageNetA", "imagenet-adversarial", "imagenet-a", "ImageNet-A", "imagenet-a/<wnid>/"
    ),
    _variant_entry(
        "ImageNetR", "imagenet-rendition", "imagenet-r", "ImageNet-R", "imagenet-r/<wnid>/"
    ),
)
BASE_TO_NOVEL = tuple(b.name for b in BENCHMARKS if not b.test_only)  # the 11 data sets
VARIANTS = tuple(b.name for b in BENCHMARKS if b.test_only)  # domain generalisation targets


def list_benchmarks() -> list[str]:
    return [b.name for b in BENCHMARKS]


@functools.cache
def _by_key() -> dict[str, Benchmark]:
    return {key.lower(): b for b in BENCHMARKS for key in (b.name, b.folder, *b.aliases)}


def get_benchmark(name: str) -> Benchmark:
    """An entry by its Dassl name, folder or alias (case-insensitive); unknown names raise."""
    try:
        return _by_key()[name.strip().lower()]
    except KeyError:
        raise DataError(
            f"unknown data set {name!r}; known: {', '.join(list_benchmarks())}"
        ) from None


def detect_benchmark(folder: Path) -> Benchmark | None:
    """The entry whose layout `folder` holds, if any (the folder's own name does not matter)."""
    found = [b for b in BENCHMARKS if b.matches(folder)]
    if len(found) > 1:
        names = ", ".join(b.name for b in found)
        raise DataError(f"{folder} looks like several data sets ({names}); open it by name")
    return found[0] if found else None


def benchmark_for_split_file(split_file: Path) -> Benchmark | None:
    """The entry that reads `split_file` (a ``split_zhou_<Name>.json``), if one does."""
    return next((b for b in BENCHMARKS if b.requires == (split_file.name,)), None)


def benchmark_path(name: str, data_root: Path) -> Path:
    """``data_root/<folder>`` of data set `name`, checked against its layout."""
    entry = get_benchmark(name)
    folder = data_root.expanduser() / entry.folder
    if not folder.is_dir():
        raise DataError(f"{entry.name} is expected in {folder} ({entry.layout}); no such folder")
    if not entry.matches(folder):
        raise DataError(entry.layout_error(folder))
    return folder
