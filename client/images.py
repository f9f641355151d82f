"""Images as the client accepts them: a path, bytes, a PIL image or a numpy array (HWC or HW,
uint8), one or a list, each turned into an upload ``(filename, bytes, content type)``.
Encoded files (paths, bytes) are sent as they are; the service decodes and checks them. PIL
and numpy are imported only when such an image is given."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeAlias

ImageInput: TypeAlias = Any  # str | os.PathLike | bytes | PIL.Image.Image | numpy.ndarray
Upload = tuple[str, bytes, str]

SUFFIXES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".gif": "image/gif",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}
MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png", ".png"),
    (b"\xff\xd8\xff", "image/jpeg", ".jpg"),
    (b"GIF8", "image/gif", ".gif"),
    (b"BM", "image/bmp", ".bmp"),
)


def is_single(images: Any) -> bool:
    """One image rather than a list of them (a 2-D or 3-D array is one image)."""
    if isinstance(images, str | bytes | bytearray | memoryview | os.PathLike):
        return True
    if hasattr(images, "__array_interface__") and not isinstance(images, list | tuple):
        # PIL images and numpy arrays both expose it; a 4-D array is a batch
        return len(getattr(images, "shape", ())) != 4
    return not isinstance(images, Iterable)


def as_list(images: Any) -> list[ImageInput]:
    if is_single(images):
        return [images]
    items = list(images)
    if not items:
        raise ValueError("no images given")
    return items


def to_upload(image: ImageInput, index: int = 0) -> Upload:
    """One image as ``(filename, bytes, content type)``."""
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        data = path.read_bytes()
        return path.name, data, SUFFIXES.get(path.suffix.lower()) or sniff(data)[0]
    if isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
        kind, suffix = sniff(data)
        return f"image-{index}{suffix}", data, kind
    if _is_pil(image):
        return f"image-{index}.png", _png(image), "image/png"
    if hasattr(image, "__array_interface__") or hasattr(image, "__array__"):
        return f"image-{index}.png", _png(_array_image(image)), "image/png"
    raise TypeError(
        f"image {index}: a path, bytes, a PIL image or a numpy array, not {type(image).__name__}"
    )


def to_uploads(images: Any) -> list[Upload]:
    return [to_upload(image, i) for i, image in enumerate(as_list(images))]


def sniff(data: bytes) -> tuple[str, str]:
    """(content type, suffix) from the file's first bytes; the service decodes what PIL can."""
    for magic, kind, suffix in MAGIC:
        if data.startswith(magic):
            return kind, suffix
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", ".webp"
    return "application/octet-stream", ""


def _is_pil(image: Any) -> bool:
    return any(cls.__module__.startswith("PIL.") for cls in type(image).__mro__)


def _png(image: Any) -> bytes:
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P", "I;16", "1"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _array_image(array: Any) -> Any:
    import numpy as np
    from PIL import Image

    values = np.asarray(array)
    if values.dtype != np.uint8:
        raise TypeError(f"numpy images must be uint8 (HWC or HW), not {values.dtype}")
    if values.ndim == 3 and values.shape[2] == 1:
        values = values[:, :, 0]
    if values.ndim not in (2, 3) or (values.ndim == 3 and values.shape[2] not in (3, 4)):
        raise ValueError(f"numpy images are HxW or HxWx3/4 uint8 arrays, not shape {values.shape}")
    return Image.fromarray(values)


IMAGE_SUFFIXES = frozenset(SUFFIXES)


def folder_examples(folder: str | os.PathLike[str]) -> list[tuple[Path, str]]:
    """``(path, label)`` of every image under ``folder/<label>/``, sorted: the class folders'
    names are the labels."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    examples = [
        (path, label_dir.name)
        for label_dir in sorted(p for p in root.iterdir() if p.is_dir())
        for path in sorted(label_dir.rglob("*"))
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not examples:
        raise ValueError(f"{root}: no images under {root}/<class>/ (png, jpg, webp, ...)")
    return examples
