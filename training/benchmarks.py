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
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from training.errors import DataError
from training.sources import (
    ImageSource,
    LabeledImage,
    is_image,
    names_in_label_order,
    read_dassl_split,
    require_files,
)

Reader = Callable[[Path, str], ImageSource]  # (data-set folder, split) -> source
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


def _split_file_reader(split_file: str, image_dir: str) -> Reader:
    def read(folder: Path, split: str) -> ImageSource:
        return read_dassl_split(folder / split_file, split, folder / image_dir)

    return read


def read_classnames(path: Path) -> dict[str, str]:
    """ImageNet's ``classnames.txt``: one ``<wnid> <class name>`` per line, in file order."""
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    names: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        folder, _, name = line.strip().partition(" ")
        if not folder:
            continue
        if not name.strip():
            raise DataError(f"{path}:{number}: expected '<folder> <class name>', got {line!r}")
        names[folder] = name.strip()
    if not names:
        raise DataError(f"{path} lists no classes")
    return names


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image(p))


def _class_folders(image_dir: Path) -> list[Path]:
    if not image_dir.is_dir():
        raise DataError(f"{image_dir} does not exist")
    return sorted(p for p in image_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_wnid_folders(image_dir: Path, classnames: dict[str, str], where: str) -> ImageSource:
    """``image_dir/<wnid>/*``: label = position of the folder among the sorted folders (Dassl's
    ImageNet, -Sketch, -A and -R readers); names from ``classnames.txt``."""
    folders = _class_folders(image_dir)
    unknown = [f.name for f in folders if f.name not in classnames]
    if unknown:
        raise DataError(f"{where}: folders not in classnames.txt: {unknown[:10]}")
    pairs = [(label, classnames[f.name]) for label, f in enumerate(folders)]
    names = names_in_label_order(pairs, where)
    items = [
        LabeledImage(label=name, path=image)
        for name, folder in zip(names, folders, strict=True)
        for image in _images_in(folder)
    ]
    if not items:
        raise DataError(f"no images under {image_dir}/<folder>/")
    return ImageSource(names, items)


def _read_imagenet(folder: Path, split: str) -> ImageSource:
    # the validation images are the test set (and CoOp's val set); train is the training set
    image_dir = folder / "images" / ("train" if split == "train" else "val")
    return read_wnid_folders(image_dir, read_classnames(folder / "classnames.txt"), str(folder))


def _wnid_variant_reader(image_dir: str) -> Reader:
    def read(folder: Path, split: str) -> ImageSource:
        classnames = read_classnames(folder / "classnames.txt")
        return read_wnid_folders(folder / image_dir, classnames, str(folder))

    return read


def _read_imagenet_v2(folder: Path, split: str) -> ImageSource:
    """``<label>/*`` folders numbered 0..n-1; label i is the i-th line of classnames.txt."""
    classnames = list(read_classnames(folder / "classnames.txt").values())
    image_dir = folder / "imagenetv2-matched-frequency-format-val"
    names = names_in_label_order(list(enumerate(classnames)), str(folder))
    missing = [str(label) for label in range(len(names)) if not (image_dir / str(label)).is_dir()]
    if missing:
        raise DataError(f"{image_dir} lacks the label folder(s) {missing[:10]}")
    items = [
        LabeledImage(label=name, path=image)
        for label, name in enumerate(names)
        for image in _images_in(image_dir / str(label))
    ]
    return ImageSource(names, items)


def _read_aircraft(folder: Path, split: str) -> ImageSource:
    """``variants.txt`` (label = line index) and ``images_variant_<split>.txt`` lines
    ``<image id> <variant>``; images are ``images/<image id>.jpg``."""
    variants_file = folder / "variants.txt"
    variants = [line.strip() for line in variants_file.read_text(encoding="utf-8").splitlines()]
    variants = [v for v in variants if v]
    label_of = {variant: label for label, variant in enumerate(variants)}
    names = names_in_label_order(list(enumerate(variants)), str(variants_file))
    list_file = folder / f"images_variant_{split}.txt"
    if not list_file.is_file():
        raise DataError(f"{list_file} does not exist")
    items = []
    for number, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
        image_id, _, variant = line.strip().partition(" ")
        if not image_id:
            continue
        if variant.strip() not in label_of:
            raise DataError(f"{list_file}:{number}: {variant!r} is not in variants.txt")
        name = names[label_of[variant.strip()]]
        items.append(LabeledImage(label=name, path=folder / "images" / f"{image_id}.jpg"))
    require_files([item.path for item in items if item.path is not None], str(list_file))
    return ImageSource(names, items)


def _split_entry(
    name: str, folder: str, split_name: str, image_dir: str, template: str, *aliases: str
) -> Benchmark:
    split_file = f"split_zhou_{split_name}.json"
    return Benchmark(
        name=name,
        folder=folder,
        template=template,
        layout=f"{split_file} and the images under {image_dir}/",
        reader=_split_file_reader(split_file, image_dir),
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
        reader=reader or _wnid_variant_reader(image_dir),
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
        reader=_read_imagenet,
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
        reader=_read_aircraft,
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
        _read_imagenet_v2,
    ),
    Benchmark(
        name="ImageNetSketch",
        folder="imagenet-sketch",
        template=PLAIN,
        layout="ImageNet's classnames.txt and images/<wnid>/",
        reader=_wnid_variant_reader("images"),
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
