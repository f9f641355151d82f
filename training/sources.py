"""Labelled image sources: image folders, CSV/JSONL manifests, CoOp/Dassl splits, uploads.

Every reader returns an `ImageSource`: the class names in label order and a list of
`LabeledImage`s whose labels are class *names*. Folders and manifests order their classes by
name; CoOp/Dassl data sets by their integer labels, as Dassl does (the base-to-novel split cuts
that order). Indices are assigned later, against whichever label set a dataset is built for, so a
source can be restricted, sampled or scored against another classifier's classes without
relabelling. Readers check that every file exists up front: a typo in a manifest should
fail before a training run starts, not in the middle of an epoch.
"""

from __future__ import annotations

import csv
import functools
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from promptserve.training.errors import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
SPLITS = ("train", "val", "test")
_SHOW_MISSING = 5  # how many missing files an error names

ImageLoader = Callable[[], Image.Image]


@dataclass(frozen=True)
class LabeledImage:
    """One labelled image: a file on disk, or a loader for an image held elsewhere.

    A loader must be picklable (a `functools.partial` of a module-level function) so that data
    loader workers can receive it, and needs a `name` that orders and identifies it.
    """

    label: str  # class name
    path: Path | None = None
    loader: ImageLoader | None = field(default=None, compare=False)
    name: str = ""  # identifies a loader image in sorting and error messages

    def __post_init__(self) -> None:
        if (self.path is None) == (self.loader is None):
            raise DataError("a LabeledImage needs exactly one of a path or a loader")
        if self.loader is not None and not self.name:
            raise DataError("a LabeledImage with a loader needs a name")

    @property
    def key(self) -> str:
        """A stable sort key: the path for files, the name otherwise."""
        return str(self.path) if self.path is not None else self.name

    def open_rgb(self) -> Image.Image:
        """Decode the image fully and convert it to RGB; unreadable images raise DataError."""
        try:
            if self.path is not None:
                with Image.open(self.path) as image:
                    return image.convert("RGB")  # decodes now, while the file is open
            assert self.loader is not None  # __post_init__ guarantees one of the two
            return self.loader().convert("RGB")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot read image {self.key}: {exc}") from exc


@dataclass(frozen=True)
class ImageSource:
    """A labelled collection of images with its class names in label order."""

    class_names: list[str]  # unique, in label order (label i is class_names[i])
    items: list[LabeledImage]
    description: str = ""  # where the images came from, for logs and summaries
    template: str | None = None  # the data set's hand-crafted prompt, e.g. "{} texture."
    dataset: str | None = None  # its name in the benchmark registry, when read through it
    # method-config fields this data calls for unless a preset or override sets them
    # (the synthetic world keeps the recipe its `mini` presets were tuned with)
    recipe: Mapping[str, Any] = field(default_factory=dict)
    # the items are in the order of a CoOp/Dassl list file, so a few-shot draw follows Dassl's
    # (`training.data.sample_few_shot`) and gives CoOp's shots
    dassl_order: bool = False

    def __post_init__(self) -> None:
        if len(set(self.class_names)) != len(self.class_names):
            raise DataError("class names of an ImageSource must be unique")
        unknown = {item.label for item in self.items} - set(self.class_names)
        if unknown:
            raise DataError(f"images labelled with unknown classes: {sorted(unknown)[:10]}")

    @classmethod
    def from_items(cls, items: Sequence[LabeledImage], description: str = "") -> ImageSource:
        """A source whose classes are exactly the labels that occur in `items`."""
        return cls(sorted({item.label for item in items}), list(items), description)

    def __len__(self) -> int:
        return len(self.items)

    def by_class(self) -> dict[str, list[LabeledImage]]:
        """Items grouped by class, in label order, each group sorted by `LabeledImage.key`."""
        groups: dict[str, list[LabeledImage]] = {name: [] for name in self.class_names}
        for item in self.items:
            groups[item.label].append(item)
        return {name: sorted(group, key=lambda item: item.key) for name, group in groups.items()}

    def counts(self) -> dict[str, int]:
        """Images per class, in label order."""
        return {name: len(group) for name, group in self.by_class().items()}


def read_image_folder(root: Path) -> ImageSource:
    """`root/<class name>/*.{jpg,jpeg,png,bmp,webp}`; directory names are the labels, as-is."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    items: list[LabeledImage] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and is_image(p))
        items.extend(LabeledImage(label=class_dir.name, path=p) for p in files)
    if not items:
        raise DataError(
            f"no images found in {root}: expected {root}/<class name>/<image> with one of the "
            f"suffixes {', '.join(sorted(IMAGE_SUFFIXES))}"
        )
    return ImageSource.from_items(items, description=f"image folder {root}")


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def read_manifest(path: Path) -> ImageSource:
    """A CSV (`path,label` header) or JSONL (`{"path": ..., "label": ...}`) manifest.

    Relative image paths are resolved against the manifest's directory.
    """
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _read_csv(path)
    elif suffix == ".jsonl":
        rows = _read_jsonl(path)
    else:
        raise DataError(f"manifest {path} must end in .csv or .jsonl")
    if not rows:
        raise DataError(f"manifest {path} lists no images")
    items = [LabeledImage(label=label, path=path.parent / image) for image, label in rows]
    require_files([item.path for item in items if item.path is not None], str(path))
    return ImageSource.from_items(items, description=f"manifest {path}")


def _read_csv(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = [cell.strip().lower() for cell in next(reader, [])]
        if header[:2] != ["path", "label"]:
            raise DataError(f"{path}: the first row must be the header 'path,label', got {header}")
        rows = []
        for line, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise DataError(f"{path}:{line}: expected 'path,label', got {row}")
            rows.append((row[0].strip(), row[1].strip()))
    return rows


def _read_jsonl(path: Path) -> list[tuple[str, str]]:
    rows = []
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            record: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{line}: not valid JSON ({exc})") from exc
        if not isinstance(record, dict) or not all(
            isinstance(record.get(key), str) and record[key].strip() for key in ("path", "label")
        ):
            raise DataError(f'{path}:{line}: expected {{"path": str, "label": str}}, got {text}')
        rows.append((record["path"].strip(), record["label"].strip()))
    return rows


def require_files(paths: Sequence[Path], where: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:_SHOW_MISSING])
        more = f" and {len(missing) - _SHOW_MISSING} more" if len(missing) > _SHOW_MISSING else ""
        raise DataError(f"{len(missing)} image(s) listed in {where} do not exist: {shown}{more}")


def from_memory(images: Sequence[tuple[Image.Image | bytes, str]]) -> ImageSource:
    """Uploaded images (PIL images or encoded bytes) with their labels, named `upload-<i>`."""
    if not images:
        raise DataError("no images were given")
    items = []
    for index, (image, label) in enumerate(images):
        if not isinstance(label, str) or not label.strip():
            raise DataError(f"upload {index} has no label")
        loader: ImageLoader = (
            functools.partial(_decode, image)
            if isinstance(image, bytes)
            else functools.partial(_same, image)
        )
        items.append(LabeledImage(label=label.strip(), loader=loader, name=f"upload-{index:06d}"))
    return ImageSource.from_items(items, description=f"{len(items)} uploaded images")


def _decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))  # lazy; LabeledImage.open_rgb decodes and reports errors


def _same(image: Image.Image) -> Image.Image:
    return image
