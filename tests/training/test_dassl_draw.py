"""The few-shot draw on CoOp/Dassl sources is Dassl's, so the shots are CoOp's own.

`dassl_draw` restates, from Dassl's documented behaviour, what ``set_random_seed(seed)`` followed
by ``DatasetBase.generate_fewshot_dataset(train, num_shots=shots)`` selects: Python's global
generator seeded, the items grouped by integer label in the order labels first occur, each group
in file order, ``random.sample`` per group, ``random.choices`` for a group smaller than `shots`.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import pytest

from promptserve.training.data import open_dataset, sample_few_shot
from promptserve.training.protocols import ProtocolRequest, make_plan
from promptserve.training.sources import ImageSource
from tests.benchmark_roots import make_benchmark_root, write_image

# label -> (class name, images in the train split): two classes smaller than 16 shots
CLASSES = {
    0: ("sea_urchin", 20),
    1: ("anemone", 7),
    2: ("coral", 18),
    3: ("kelp", 3),
    4: ("eel", 12),
}
SHOTS = (1, 2, 4, 8, 16)
SEEDS = (1, 2, 3, 7)

Entry = tuple[str, int, str]  # [relative path, label, class name], as in a split file


def dassl_draw(entries: list[Entry], shots: int, seed: int) -> list[str]:
    """The relative paths Dassl draws, in its order (Python's global generator, then restored)."""
    state = random.getstate()
    try:
        random.seed(seed)
        by_label: defaultdict[int, list[str]] = defaultdict(list)
        for path, label, _ in entries:
            by_label[label].append(path)
        drawn: list[str] = []
        for items in by_label.values():
            if len(items) >= shots:
                drawn += random.sample(items, shots)
            else:
                drawn += random.choices(items, k=shots)
        return drawn
    finally:
        random.setstate(state)


def train_entries() -> list[Entry]:
    """Labels interleaved (first occurring out of label order), files out of name order."""
    order = random.Random(0)
    entries = []
    for label, (name, count) in CLASSES.items():
        numbers = list(range(count))
        order.shuffle(numbers)
        entries += [(f"{name}/{name}_{n:03d}.jpg", label, name) for n in numbers]
    order.shuffle(entries)
    return entries


@pytest.fixture(scope="module")
def split_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Entry]]:
    root = tmp_path_factory.mktemp("reef")
    train = train_entries()
    test = [(f"{name}/test_{name}.jpg", label, name) for label, (name, _) in CLASSES.items()]
    for shade, (path, _, _) in enumerate(train + test):
        write_image(root / "images" / path, shade)
    splits = {"train": train, "val": test, "test": test}
    (root / "split_zhou_Reef.json").write_text(json.dumps(splits))
    return root, train


def paths(source: ImageSource, root: Path) -> list[str]:
    return [item.path.relative_to(root).as_posix() for item in source.items if item.path]


def test_the_fixture_orders_files_unlike_labels_and_names(
    split_root: tuple[Path, list[Entry]],
) -> None:
    _, train = split_root
    first_seen = list(dict.fromkeys(label for _, label, _ in train))
    assert first_seen != sorted(first_seen)
    coral = [path for path, label, _ in train if label == 2]
    assert coral != sorted(coral)


@pytest.mark.parametrize("shots", SHOTS)
def test_a_split_file_is_drawn_as_dassl_draws_it(
    shots: int, split_root: tuple[Path, list[Entry]]
) -> None:
    root, train = split_root
    source = open_dataset(str(root), split="train")
    assert source.dassl_order
    for seed in SEEDS:
        drawn = sample_few_shot(source, shots, seed, quiet=True)
        assert paths(drawn, root / "images") == dassl_draw(train, shots, seed)
        assert len(drawn) == shots * len(CLASSES)  # small classes are filled up, as Dassl's


def test_the_sorted_draw_would_not_give_dassls_images(split_root: tuple[Path, list[Entry]]) -> None:
    root, train = split_root
    sorted_source = replace(open_dataset(str(root), split="train"), dassl_order=False)
    for seed in SEEDS:
        drawn = sample_few_shot(sorted_source, 4, seed, quiet=True)
        assert sorted(paths(drawn, root / "images")) != sorted(dassl_draw(train, 4, seed))


def test_base_to_novel_keeps_the_base_part_of_the_all_class_draw(
    split_root: tuple[Path, list[Entry]],
) -> None:
    root, train = split_root
    base = set(sorted(CLASSES)[: math.ceil(len(CLASSES) / 2)])  # Dassl's subsample_classes
    base_of = {path for path, label, _ in train if label in base}
    for shots, seed in ((4, 1), (16, 2), (8, 3)):
        request = ProtocolRequest(protocol="base2novel", method="coop", data=str(root), shots=shots)
        plan = make_plan(request, seed)
        assert plan.drawn
        want = [path for path in dassl_draw(train, shots, seed) if path in base_of]
        assert paths(plan.train, root / "images") == want


def test_aircraft_lists_are_drawn_in_file_order(tmp_path: Path) -> None:
    make_benchmark_root(tmp_path)
    folder = tmp_path / "fgvc_aircraft"
    variants = (folder / "variants.txt").read_text().split()
    lines = (folder / "images_variant_train.txt").read_text().splitlines()
    entries = [
        (f"{image}.jpg", variants.index(variant), variant)
        for image, variant in (line.split(" ", 1) for line in lines)
    ]
    source = open_dataset(str(folder), split="train")
    for shots, seed in ((1, 1), (2, 2), (3, 3)):
        drawn = sample_few_shot(source, shots, seed, quiet=True)
        assert paths(drawn, folder / "images") == dassl_draw(entries, shots, seed)


def test_other_sources_draw_from_sorted_files_whatever_their_listing(tmp_path: Path) -> None:
    for i in range(6):
        for name in ("cat", "dog"):
            write_image(tmp_path / name / f"{i}.jpg", i)
    rows = [f"{name}/{i}.jpg,{name}" for i in range(6) for name in ("cat", "dog")]
    (tmp_path / "forward.csv").write_text("path,label\n" + "\n".join(rows))
    (tmp_path / "backward.csv").write_text("path,label\n" + "\n".join(reversed(rows)))
    forward = open_dataset(str(tmp_path / "forward.csv"))
    assert not forward.dassl_order
    for seed in SEEDS:
        want = sample_few_shot(forward, 3, seed).items
        assert sample_few_shot(open_dataset(str(tmp_path / "backward.csv")), 3, seed).items == want
    short = sample_few_shot(forward, 10, 1, quiet=True)
    assert len(short) == 12  # a class with fewer images keeps each of them once
