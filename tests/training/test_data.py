"""Data sources, few-shot sampling, class splits, and the dataset/loader pair."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from promptserve.models.preprocess import eval_transform
from promptserve.training.data import (
    ImageDataset,
    from_memory,
    make_loader,
    open_dataset,
    restrict_classes,
    sample_few_shot,
    split_base_novel,
)
from promptserve.training.errors import DataError
from tests.helpers import make_image_folder

COLOURS = {
    "red disc": (220, 30, 30),
    "green_thing": (30, 180, 40),
    "blue": (30, 40, 220),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("colours"), COLOURS, per_class=6, seed=0)


def relative_rows(root: Path) -> list[tuple[str, str]]:
    return [(f"{p.parent.name}/{p.name}", p.parent.name) for p in sorted(root.glob("*/*.png"))]


def test_image_folder_lists_images_with_directory_names_as_labels(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", COLOURS, per_class=3, seed=0)
    (root / "empty class").mkdir()
    (root / "blue" / "notes.txt").write_text("not an image")
    source = open_dataset(str(root))
    assert source.class_names == ["blue", "green_thing", "red disc"]
    assert source.counts() == {"blue": 3, "green_thing": 3, "red disc": 3}
    assert all(
        item.path is not None and item.path.parent.name == item.label for item in source.items
    )


def test_image_folder_without_images_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "cats").mkdir()
    with pytest.raises(DataError, match="no images found"):
        open_dataset(str(tmp_path))


def test_folder_with_train_and_test_subfolders_follows_the_split(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "train", COLOURS, per_class=3, seed=0)
    make_image_folder(tmp_path / "test", COLOURS, per_class=2, seed=1)
    assert len(open_dataset(str(tmp_path), split="train")) == 9
    assert len(open_dataset(str(tmp_path), split="test")) == 6
    with pytest.raises(DataError, match="no val/ folder"):
        open_dataset(str(tmp_path), split="val")


def test_csv_manifest_resolves_paths_against_its_directory(folder: Path) -> None:
    manifest = folder / "manifest.csv"
    lines = ["path,label", *(f"{path},{label}" for path, label in relative_rows(folder))]
    manifest.write_text("\n".join(lines) + "\n")
    source = open_dataset(str(manifest))
    assert source.class_names == sorted(COLOURS)
    assert len(source) == 18
    assert all(item.path is not None and item.path.is_file() for item in source.items)


def test_jsonl_manifest_resolves_paths_against_its_directory(folder: Path) -> None:
    manifest = folder / "manifest.jsonl"
    rows = relative_rows(folder)
    manifest.write_text("".join(json.dumps({"path": p, "label": lab}) + "\n" for p, lab in rows))
    source = open_dataset(str(manifest))
    assert source.counts() == dict.fromkeys(sorted(COLOURS), 6)


def test_manifest_with_missing_files_names_them(folder: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\n{folder}/blue/img_0.png,blue\nnowhere/gone.png,blue\n")
    with pytest.raises(DataError, match=r"1 image\(s\).*gone\.png"):
        open_dataset(str(manifest))


def test_csv_manifest_needs_its_header(folder: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"{folder}/blue/img_0.png,blue\n")
    with pytest.raises(DataError, match="header 'path,label'"):
        open_dataset(str(manifest))


def test_jsonl_manifest_reports_the_bad_line(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "a.png", "label": "x"}\n{"path": "b.png"}\n')
    with pytest.raises(DataError, match=r"m\.jsonl:2"):
        open_dataset(str(manifest))


def test_dassl_split_files_find_the_image_directory(tmp_path: Path) -> None:
    images = make_image_folder(tmp_path / "images", COLOURS, per_class=4, seed=3)
    names = sorted(COLOURS)
    entries = [[path, names.index(label), label] for path, label in relative_rows(images)]
    split_file = tmp_path / "split_zhou_Test.json"
    split_file.write_text(json.dumps({"train": entries[0::2], "val": [], "test": entries[1::2]}))
    train = open_dataset(str(tmp_path), split="train")
    test = open_dataset(str(split_file), split="test")
    # label order, and "_" read as a space as the releases prompt with it
    assert train.class_names == test.class_names == ["blue", "green thing", "red disc"]
    assert len(train) + len(test) == 12
    assert all(
        item.path is not None and item.path.parent.parent.name == "images" for item in train.items
    )
    with pytest.raises(DataError, match="'val' of .* is empty"):
        open_dataset(str(tmp_path), split="val")


def test_few_shot_sampling_is_k_per_class_and_seeded(folder: Path) -> None:
    source = open_dataset(str(folder))
    first = sample_few_shot(source, shots=2, seed=1)
    assert first.counts() == dict.fromkeys(sorted(COLOURS), 2)
    assert sample_few_shot(source, shots=2, seed=1).items == first.items
    assert sample_few_shot(source, shots=2, seed=2).items != first.items


def test_few_shot_keeps_small_classes_whole_and_rejects_zero(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = open_dataset(str(folder))
    with caplog.at_level(logging.WARNING, logger="promptserve.training.data"):
        sampled = sample_few_shot(source, shots=10, seed=0)
    assert sampled.counts() == source.counts()
    assert "fewer than 10 shots" in caplog.text
    with pytest.raises(DataError, match="shots"):
        sample_few_shot(source, shots=0, seed=0)


def test_base_novel_split_and_class_restriction(folder: Path) -> None:
    # the names come in label order; the split cuts that order, it does not sort names
    assert split_base_novel(["e", "c", "a", "d", "b"]) == (["e", "c", "a"], ["d", "b"])
    source = open_dataset(str(folder))
    base, novel = split_base_novel(source.class_names)
    restricted = restrict_classes(source, novel)
    assert restricted.class_names == novel == ["red disc"]
    assert {item.label for item in restricted.items} == {"red disc"}
    with pytest.raises(DataError, match="purple"):
        restrict_classes(source, ["purple"])


def test_dataset_gives_tensors_of_the_backbone_size(folder: Path, tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    cfg = tiny_backbone.preprocess
    assert cfg.size == 32
    source = open_dataset(str(folder))
    names = ["blue", "extra", "green_thing", "red disc"]  # a wider label set than the data
    dataset = ImageDataset(source, eval_transform(cfg), names)
    pixels, label = dataset[len(dataset) - 1]
    assert pixels.shape == (3, 32, 32)
    assert pixels.dtype == torch.float32
    assert names[label] == source.items[-1].label
    batches = list(make_loader(dataset, 7, shuffle=False, seed=0))
    assert [b[0].shape[0] for b in batches] == [7, 7, 4]  # drop_last is off
    assert batches[0][1].tolist() == dataset.targets[:7]


def test_loader_order_is_fixed_by_the_seed(folder: Path) -> None:
    dataset = ImageDataset(open_dataset(str(folder)), eval_transform(_cfg(8)))

    def order(seed: int) -> list[int]:
        return [
            int(x)
            for _, labels in make_loader(dataset, 18, shuffle=True, seed=seed)
            for x in labels
        ]

    assert order(3) == order(3)
    assert order(3) != order(4)


def test_corrupt_image_raises_a_data_error_naming_it(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path, {"a": (200, 0, 0), "b": (0, 0, 200)}, per_class=1)
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    source = open_dataset(str(root))
    dataset = ImageDataset(source, eval_transform(_cfg(8)))
    broken = next(i for i, item in enumerate(source.items) if item.key.endswith("broken.jpg"))
    with pytest.raises(DataError, match="broken.jpg"):
        dataset[broken]


def test_in_memory_uploads(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("L", (10, 12), 128).save(buffer, format="PNG")
    source = from_memory(
        [(Image.new("RGB", (9, 9), (255, 0, 0)), "red"), (buffer.getvalue(), "grey")]
    )
    dataset = ImageDataset(source, eval_transform(_cfg(8)))
    assert source.class_names == ["grey", "red"]
    assert [tuple(dataset[i][0].shape) for i in range(2)] == [(3, 8, 8)] * 2
    with pytest.raises(DataError, match="upload-000000"):
        ImageDataset(from_memory([(b"junk", "x")]), eval_transform(_cfg(8)))[0]


def test_open_dataset_rejects_unknown_specs(tmp_path: Path) -> None:
    (tmp_path / "data.parquet").write_bytes(b"")
    with pytest.raises(DataError, match="expected one of") as info:
        open_dataset(str(tmp_path / "data.parquet"))
    assert "CSV manifest" in str(info.value)
    assert "synthetic:" in str(info.value)
    with pytest.raises(DataError, match="no such file"):
        open_dataset(str(tmp_path / "missing"))
    with pytest.raises(DataError, match="unknown split"):
        open_dataset(str(tmp_path), split="dev")


def test_synthetic_specs_open_the_world() -> None:
    source = open_dataset("synthetic:color?n=2&seed=3", split="test")
    assert source.class_names == sorted(source.class_names)
    assert len(source) == 2 * len(source.class_names)
    with pytest.raises(DataError, match="synthetic"):
        open_dataset("synthetic:nonsense")


def _cfg(size: int):  # type: ignore[no-untyped-def]
    from promptserve.models.backbone import PreprocessConfig

    return PreprocessConfig(size=size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
