"""Miniature benchmark data roots in CoOp's DATASETS.md layout, generated for the tests.

Each data set gets a handful of its real class names under their real integer labels (so label
order differs from name order where it does in the real data: Caltech101, Flowers, Cars, SUN397,
ImageNet), names with underscores as CoOp's split files hold them, and a few 8-pixel images per
class and split. `EXPECTED` says what a correct reader returns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

PER_SPLIT = {"train": 2, "val": 1, "test": 2}


@dataclass(frozen=True)
class Expected:
    folder: str
    names: list[str]  # readable class names in label order
    template: str
    splits: tuple[str, ...] = ("train", "val", "test")
    images: dict[str, int] | None = None  # images per split when not PER_SPLIT x classes


# (label, class name as in the split file, image folder); labels are the real ones
SPLIT_SETS: dict[str, tuple[str, str, str, list[tuple[int, str, str]]]] = {
    "Caltech101": ("caltech-101", "Caltech101", "101_ObjectCategories", [
        (0, "face", "Faces"), (1, "leopard", "Leopards"), (2, "motorbike", "Motorbikes"),
        (3, "accordion", "accordion"), (4, "airplane", "airplanes"), (18, "car_side", "car_side"),
        (19, "ceiling_fan", "ceiling_fan"),
    ]),
    "OxfordPets": ("oxford_pets", "OxfordPets", "images", [
        (0, "abyssinian", ""), (1, "american_bulldog", ""), (2, "american_pit_bull_terrier", ""),
        (3, "basset_hound", ""), (4, "beagle", ""),
    ]),
    "StanfordCars": ("stanford_cars", "StanfordCars", ".", [
        (0, "AM General Hummer SUV 2000", ""), (1, "Acura RL Sedan 2012", ""),
        (2, "Acura TL Sedan 2012", ""), (3, "Acura TL Type-S 2008", ""),
        (4, "Acura TSX Sedan 2012", ""), (5, "Acura Integra Type R 2001", ""),
    ]),
    "OxfordFlowers": ("oxford_flowers", "OxfordFlowers", "jpg", [
        (0, "pink primrose", ""), (1, "hard-leaved pocket orchid", ""),
        (2, "canterbury bells", ""), (3, "sweet pea", ""), (4, "english marigold", ""),
    ]),
    "Food101": ("food-101", "Food101", "images", [
        (0, "apple_pie", "apple_pie"), (1, "baby_back_ribs", "baby_back_ribs"),
        (2, "baklava", "baklava"), (3, "beef_carpaccio", "beef_carpaccio"),
    ]),
    "SUN397": ("sun397", "SUN397", "SUN397", [
        (0, "abbey", "a/abbey"), (1, "airplane_cabin", "a/airplane_cabin"),
        (4, "amphitheater", "a/amphitheater"),
        (8, "outdoor apartment_building", "a/apartment_building/outdoor"),
        (9, "indoor apse", "a/apse/indoor"),
    ]),
    "DescribableTextures": ("dtd", "DescribableTextures", "images", [
        (0, "banded", "banded"), (1, "blotchy", "blotchy"), (2, "braided", "braided"),
        (3, "bubbly", "bubbly"), (4, "bumpy", "bumpy"),
    ]),
    "EuroSAT": ("eurosat", "EuroSAT", "2750", [
        (0, "Annual Crop Land", "AnnualCrop"), (1, "Forest", "Forest"),
        (2, "Herbaceous Vegetation Land", "HerbaceousVegetation"),
        (3, "Highway or Road", "Highway"), (4, "Industrial Buildings", "Industrial"),
    ]),
    "UCF101": ("ucf101", "UCF101", "UCF-101-midframes", [
        (0, "Apply_Eye_Makeup", "Apply_Eye_Makeup"), (1, "Apply_Lipstick", "Apply_Lipstick"),
        (2, "Archery", "Archery"), (3, "Baby_Crawling", "Baby_Crawling"),
    ]),
}  # fmt: skip
TEMPLATES = {
    "Caltech101": "a photo of a {}.",
    "OxfordPets": "a photo of a {}, a type of pet.",
    "StanfordCars": "a photo of a {}.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "Food101": "a photo of {}, a type of food.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "SUN397": "a photo of a {}.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "UCF101": "a photo of a person doing {}.",
}
# ImageNet's classnames.txt (wnid order) and the subsets the variants hold
IMAGENET = [
    ("n01440764", "tench"), ("n01443537", "goldfish"), ("n01484850", "great white shark"),
    ("n01491361", "tiger shark"), ("n01494475", "hammerhead shark"),
    ("n01496331", "electric ray"), ("n01498041", "stingray"), ("n01514668", "rooster"),
    ("n01514859", "hen"), ("n01531178", "goldfinch"), ("n01534433", "junco"),
]  # fmt: skip
IMAGENET_TRAINED = [wnid for wnid, _ in IMAGENET[:9]]  # the folders the miniature ImageNet has
IMAGENET_A = ["n01498041", "n01531178", "n01534433"]
IMAGENET_R = ["n01443537", "n01484850", "n01494475", "n01498041", "n01514859"]
AIRCRAFT = ["707-320", "727-200", "737-200", "737-300", "A300B4", "F-16A/B"]


def write_image(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade % 256, (3 * shade) % 256, 90)).save(path, format="JPEG")


def _names(classnames: list[tuple[str, str]], wnids: list[str]) -> list[str]:
    lookup = dict(classnames)
    return [lookup[w] for w in sorted(wnids)]


def _write_split_set(root: Path, name: str) -> Expected:
    folder, split_name, image_dir, classes = SPLIT_SETS[name]
    base = root / folder
    splits: dict[str, list[list[object]]] = {}
    shade = 0
    for split, count in PER_SPLIT.items():
        entries: list[list[object]] = []
        # a real split file lists its entries in no particular class order
        for label, classname, subdir in reversed(classes):
            for i in range(count):
                if name == "StanfordCars":
                    rel = f"cars_{'test' if split == 'test' else 'train'}/{shade:05d}.jpg"
                else:
                    rel = f"{subdir}/{split}_{label}_{i}.jpg" if subdir else f"{shade:05d}.jpg"
                write_image(base / image_dir / rel, shade)
                entries.append([rel, label, classname])
                shade += 1
        splits[split] = entries
    (base / f"split_zhou_{split_name}.json").write_text(json.dumps(splits))
    names = [c.replace("_", " ") for _, c, _ in sorted(classes)]
    return Expected(folder, names, TEMPLATES[name])


def _write_wnid_folders(image_dir: Path, wnids: list[str], per_class: int) -> None:
    for index, wnid in enumerate(wnids):
        for i in range(per_class):
            write_image(image_dir / wnid / f"{wnid}_{i}.JPEG", 7 * index + i)
    (image_dir / "README.txt").parent.mkdir(parents=True, exist_ok=True)
    (image_dir / "README.txt").write_text("not a class")


def _write_classnames(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{wnid} {name}\n" for wnid, name in IMAGENET))


def make_benchmark_root(root: Path) -> dict[str, Expected]:
    """Write all 15 miniature data sets under `root`; returns what each should read as."""
    expected = {name: _write_split_set(root, name) for name in SPLIT_SETS}

    _write_classnames(root / "imagenet" / "classnames.txt")
    for split in ("train", "val"):
        count = PER_SPLIT[split] if split == "train" else PER_SPLIT["test"]
        _write_wnid_folders(root / "imagenet" / "images" / split, IMAGENET_TRAINED, count)
    expected["ImageNet"] = Expected(
        "imagenet", _names(IMAGENET, IMAGENET_TRAINED), "a photo of a {}.", ("train", "test")
    )

    aircraft = root / "fgvc_aircraft"
    aircraft.mkdir(parents=True)
    (aircraft / "variants.txt").write_text("".join(f"{v}\n" for v in AIRCRAFT))
    number = 1000000
    for split, count in PER_SPLIT.items():
        lines = []
        for variant in reversed(AIRCRAFT):
            for _ in range(count):
                write_image(aircraft / "images" / f"{number}.jpg", number)
                lines.append(f"{number} {variant}\n")
                number += 1
        (aircraft / f"images_variant_{split}.txt").write_text("".join(lines))
    expected["FGVCAircraft"] = Expected("fgvc_aircraft", AIRCRAFT, TEMPLATES["FGVCAircraft"])

    v2 = root / "imagenetv2"
    _write_classnames(v2 / "classnames.txt")
    for label in range(len(IMAGENET)):
        for i in range(2):
            write_image(
                v2 / "imagenetv2-matched-frequency-format-val" / str(label) / f"{i}.jpeg", label
            )
    variants = {
        "ImageNetV2": ("imagenetv2", [n for _, n in IMAGENET]),
        "ImageNetSketch": ("imagenet-sketch", _names(IMAGENET, [w for w, _ in IMAGENET])),
        "ImageNetA": ("imagenet-adversarial", _names(IMAGENET, IMAGENET_A)),
        "ImageNetR": ("imagenet-rendition", _names(IMAGENET, IMAGENET_R)),
    }
    for name, subdir, wnids in (
        ("ImageNetSketch", "images", [w for w, _ in IMAGENET]),
        ("ImageNetA", "imagenet-a", IMAGENET_A),
        ("ImageNetR", "imagenet-r", IMAGENET_R),
    ):
        folder = root / variants[name][0]
        _write_classnames(folder / "classnames.txt")
        _write_wnid_folders(folder / subdir, wnids, 2)
    for name, (folder_name, names) in variants.items():
        counts = {"test": 2 * len(names)}
        expected[name] = Expected(folder_name, names, "a photo of a {}.", ("test",), counts)
    return expected
