"""Write any data set spec as a CoOp/Dassl root, so generated data takes the real data's path.

The root holds ``split_zhou_<Name>.json`` (``{"train": [[path, label, class], ...], "val": ...,
"test": ...}``, paths relative to ``images/``) and the images as PNG files. Labels are indices
into the spec's classes in label order: the sorted names, so a reader that splits base and novel
by integer label and one that splits by sorted name agree, except where the spec fixes its own
halves (``pick=disjoint``: the base half first), which the integer labels keep.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from promptserve.training.data import open_dataset
from promptserve.training.errors import DataError
from promptserve.training.synthetic.tasks import is_synthetic_spec, parse_synthetic_spec

IMAGE_DIR = "images"


@dataclass(frozen=True)
class WrittenRoot:
    root: Path
    split_file: Path
    counts: dict[str, int]  # images per split
    classes: list[str]


def dataset_name(spec: str) -> str:
    """A CamelCase name for a spec: ``synthetic:color-shape?shift=hue25`` -> ColorShapeHue25."""
    body = spec.split(":", 1)[-1]
    words = re.split(r"[^A-Za-z0-9.]+", body.replace("shift=", "").replace("names=", ""))
    skip = {"n", "seed", "size", "classes"}
    kept, previous = [], ""
    for word in words:
        if word and previous not in skip and word not in skip:
            kept.append(word.replace(".", "p"))
        previous = word
    return "".join(w[:1].upper() + w[1:] for w in kept) or "Dataset"


def write_dassl_root(
    spec: str,
    out: Path,
    *,
    name: str | None = None,
    counts: dict[str, int] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> WrittenRoot:
    """Write train / val / test of `spec` under `out` (which must not exist or be empty).

    For a ``synthetic:`` spec, `counts` sets the images per class of each split (default: the
    spec's ``n`` for every split); other specs are copied split by split as they are.
    """
    name = name or dataset_name(spec)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise DataError(f"a data set name takes letters, digits, '_' and '-', got {name!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and is not an empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        splits: dict[str, list[list[object]]] = {}
        classes: list[str] = []
        for split in ("train", "val", "test"):
            source = open_dataset(_split_spec(spec, split, counts), split=split)
            classes = classes or list(source.class_names)
            if list(source.class_names) != classes:
                raise DataError(f"split {split} of {spec} has other classes than train")
            entries: list[list[object]] = []
            for i, item in enumerate(source.items):
                folder = item.label.replace(" ", "_").replace("/", "_")
                rel = f"{split}/{folder}/{i:06d}.png"
                target = scratch / IMAGE_DIR / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                item.open_rgb().save(target)
                entries.append([rel, classes.index(item.label), item.label])
                if progress is not None:
                    progress(split, i + 1, len(source.items))
            splits[split] = entries
        split_file = scratch / f"split_zhou_{name}.json"
        split_file.write_text(json.dumps(splits), encoding="utf-8")
        if out.exists():
            out.rmdir()
        os.replace(scratch, out)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return WrittenRoot(
        root=out,
        split_file=out / split_file.name,
        counts={split: len(entries) for split, entries in splits.items()},
        classes=classes,
    )


def _split_spec(spec: str, split: str, counts: dict[str, int] | None) -> str:
    if not is_synthetic_spec(spec):
        if counts:
            raise DataError("per-split image counts apply to synthetic: specs only")
        return spec
    parsed = parse_synthetic_spec(spec)  # validates before anything is drawn
    n = (counts or {}).get(split, parsed.n)
    if n < 1:
        raise DataError(f"images per class must be at least 1, got {n} for {split}")
    head, _, query = spec.partition("?")
    options = [part for part in query.split("&") if part and not part.startswith("n=")]
    return f"{head}?{'&'.join([*options, f'n={n}'])}"
