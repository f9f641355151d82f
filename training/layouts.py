"""Readers of the benchmark data sets' on-disk layouts in CoOp's DATASETS.md tree: split files,
ImageNet's class-name list and wnid folders (and its variants), FGVCAircraft's variant lists.

Each returns the classes in label order, with ``_`` in class names read as a space; the registry
of which data set uses which reader is `training.benchmarks`.
"""

from __future__ import annotations

from collections.abc import Callable
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


def split_file_reader(split_file: str, image_dir: str) -> Reader:
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


def read_imagenet(folder: Path, split: str) -> ImageSource:
    # the validation images are the test set (and CoOp's val set); train is the training set
    image_dir = folder / "images" / ("train" if split == "train" else "val")
    return read_wnid_folders(image_dir, read_classnames(folder / "classnames.txt"), str(folder))


def wnid_variant_reader(image_dir: str) -> Reader:
    def read(folder: Path, split: str) -> ImageSource:
        classnames = read_classnames(folder / "classnames.txt")
        return read_wnid_folders(folder / image_dir, classnames, str(folder))

    return read


def read_imagenet_v2(folder: Path, split: str) -> ImageSource:
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


def read_aircraft(folder: Path, split: str) -> ImageSource:
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
