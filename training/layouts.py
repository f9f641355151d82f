"""Readers of CoOp's on-disk layouts (DATASETS.md): split files (`split_zhou_<Name>.json`),
ImageNet's class-name list and wnid folders (and its variants), FGVCAircraft's variant lists.

Each returns the classes in label order, with ``_`` in class names read as a space; the registry
of which data set uses which reader is `training.benchmarks`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from promptserve.training.errors import DataError
from promptserve.training.sources import SPLITS, ImageSource, LabeledImage, is_image, require_files

Reader = Callable[[Path, str], ImageSource]  # (data-set folder, split) -> source


def find_dassl_split(root: Path) -> Path | None:
    """The `split_zhou_<Name>.json` file of a CoOp/Dassl dataset root, if it has one."""
    found = sorted(root.glob("split_zhou_*.json"))
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise DataError(f"{root} has several split files ({names}); name the one to use")
    return found[0] if found else None


def readable_name(name: str) -> str:
    """A CoOp/Dassl class name as the releases prompt with it: ``_`` becomes a space."""
    return " ".join(name.replace("_", " ").split())


def names_in_label_order(pairs: Sequence[tuple[int, str]], where: str) -> list[str]:
    """(integer label, raw class name) pairs -> readable names sorted by label.

    A label with two names, or two labels whose names read the same, is an error: the label
    order is what the base-to-novel split cuts, so it must be unambiguous.
    """
    by_label: dict[int, str] = {}
    for label, name in pairs:
        if by_label.setdefault(label, name) != name:
            raise DataError(f"{where}: label {label} is both {by_label[label]!r} and {name!r}")
    names = [readable_name(by_label[label]) for label in sorted(by_label)]
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise DataError(f"{where}: several labels share the class name(s) {repeated[:10]}")
    return names


def read_dassl_split(split_file: Path, split: str, image_dir: Path | None = None) -> ImageSource:
    """One split of a CoOp/Dassl `split_zhou_<Name>.json` (entries `[path, label, class]`).

    Classes are ordered by their integer label over all splits of the file and named with
    `readable_name`. CoOp keeps images in a dataset-specific directory ("jpg", "images",
    "2750", ...); without `image_dir` it is found by looking for the first entry under the root
    and under each immediate subdirectory.
    """
    try:
        splits = json.loads(split_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read split file {split_file}: {exc}") from exc
    if not isinstance(splits, dict) or split not in splits:
        keys = sorted(splits) if isinstance(splits, dict) else []
        raise DataError(f"split file {split_file} has no {split!r} split (it has {keys})")
    every = [
        _dassl_entry(entry, split_file)
        for key in SPLITS
        if isinstance(splits.get(key), list)
        for entry in splits[key]
    ]
    pairs = [(label, name) for _, label, name in every]
    class_names = names_in_label_order(pairs, str(split_file))
    entries = [_dassl_entry(entry, split_file) for entry in splits[split]]
    if not entries:
        raise DataError(f"split {split!r} of {split_file} is empty")
    if image_dir is None:
        image_dir = _dassl_image_dir(split_file.parent, entries[0][0])
    items = [
        LabeledImage(label=readable_name(name), path=image_dir / rel) for rel, _, name in entries
    ]
    require_files([item.path for item in items if item.path is not None], str(split_file))
    description = f"{split_file.name} [{split}]"
    return ImageSource(class_names, items, description=description, dassl_order=True)


def _dassl_entry(entry: Any, split_file: Path) -> tuple[str, int, str]:
    if (
        not isinstance(entry, list)
        or len(entry) != 3
        or not isinstance(entry[0], str)
        or not isinstance(entry[1], int)
        or isinstance(entry[1], bool)
        or not isinstance(entry[2], str)
    ):
        raise DataError(
            f"{split_file}: expected [relative_path, label_index, class_name], got {entry}"
        )
    return entry[0], entry[1], entry[2]


def _dassl_image_dir(root: Path, first: str) -> Path:
    candidates = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    for base in candidates:
        if (base / first).is_file():
            return base
    raise DataError(f"cannot find {first} under {root} or any of its immediate subdirectories")


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
    return ImageSource(names, items, dassl_order=True)  # CoOp reads the list in file order
