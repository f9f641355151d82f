"""The benchmark registry and the papers' protocol on miniature roots of all 15 layouts.

One test per defect of the old protocol layer: base/novel by label (1), no ``_`` in prompts (2),
per-data-set templates (3), Dassl's crop scale (4), the ImageNet/Aircraft/variant readers (5).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from torchvision.transforms import v2 as T

from promptserve.models.backbone import Backbone
from promptserve.models.methods import create_method, make_config
from promptserve.models.preprocess import train_transform
from promptserve.training.api import TrainRequest, fit_learner
from promptserve.training.benchmarks import BASE_TO_NOVEL, VARIANTS, benchmark_path, get_benchmark
from promptserve.training.cli import main
from promptserve.training.data import open_dataset
from promptserve.training.errors import DataError
from promptserve.training.loop import epoch_learning_rate
from promptserve.training.protocols import ProtocolRequest, make_plan
from promptserve.training.recipe import resolve_config
from promptserve.training.templates import METHOD_TEMPLATES
from tests.benchmark_roots import (
    AIRCRAFT,
    IMAGENET,
    IMAGENET_A,
    PER_SPLIT,
    Expected,
    make_benchmark_root,
)


@pytest.fixture(scope="module")
def benchmark_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Expected]]:
    root = tmp_path_factory.mktemp("DATA")
    return root, make_benchmark_root(root)


def test_the_registry_has_the_eleven_data_sets_and_four_variants() -> None:
    assert len(BASE_TO_NOVEL) == 11
    assert len(VARIANTS) == 4
    assert get_benchmark("dtd").name == get_benchmark("DescribableTextures").name
    assert get_benchmark("Flowers102").folder == "oxford_flowers"
    with pytest.raises(DataError, match="known: ImageNet, Caltech101"):
        get_benchmark("MNIST")


@pytest.mark.parametrize("name", [*BASE_TO_NOVEL, *VARIANTS])
def test_every_layout_reads_by_path_and_by_name(
    name: str, benchmark_root: tuple[Path, dict[str, Expected]]
) -> None:
    root, expected = benchmark_root
    want = expected[name]
    assert benchmark_path(name, root) == root / want.folder
    for split in want.splits:
        source = open_dataset(str(root / want.folder), split=split)
        assert source.dataset == name
        assert source.class_names == want.names  # label order, "_" read as spaces
        images = want.images[split] if want.images else PER_SPLIT[split] * len(want.names)
        assert len(source) == images
        assert all(item.path is not None and item.path.is_file() for item in source.items)


def test_point_1_base_is_the_first_half_by_label_index(
    benchmark_root: tuple[Path, dict[str, Expected]],
) -> None:
    root, expected = benchmark_root
    for name in ("Caltech101", "StanfordCars", "OxfordFlowers", "SUN397", "ImageNet"):
        names = expected[name].names
        assert names != sorted(names)  # these miniatures keep the real, non-alphabetical order
        request = ProtocolRequest(
            protocol="base2novel", method="zeroshot", data=str(root / expected[name].folder)
        )
        plan = make_plan(request, seed=1)
        cut = math.ceil(len(names) / 2)
        assert plan.train.class_names == names[:cut]
        tests = dict(plan.tests)
        assert tests["base"].class_names == names[:cut]
        assert tests["novel"].class_names == names[cut:]
    caltech = expected["Caltech101"].names
    assert caltech[:4] == ["face", "leopard", "motorbike", "accordion"]


def test_point_2_prompts_never_contain_underscores(
    benchmark_root: tuple[Path, dict[str, Expected]], tiny_backbone: Backbone
) -> None:
    root, expected = benchmark_root
    for name in ("OxfordPets", "UCF101", "SUN397", "Food101", "Caltech101"):
        source = open_dataset(str(root / expected[name].folder), split="train")
        learner = create_method("zeroshot", tiny_backbone, resolve_config("zeroshot", source))
        seen: list[str] = []
        tokenize = learner.text.tokenize

        def spy(texts, _tokenize=tokenize, _seen=seen):  # type: ignore[no-untyped-def]
            _seen.extend(texts)
            return _tokenize(texts)

        learner.text.tokenize = spy  # type: ignore[method-assign]
        learner.encode_classes(source.class_names)
        assert len(seen) == len(source.class_names)
        assert not [text for text in seen if "_" in text]
        assert seen[1] == expected[name].template.format(expected[name].names[1])


@pytest.mark.parametrize("method", ["zeroshot", "provp", "sep", "pmpo"])
def test_point_3_each_data_set_gets_its_template(
    method: str, benchmark_root: tuple[Path, dict[str, Expected]]
) -> None:
    root, expected = benchmark_root
    for name in ("DescribableTextures", "EuroSAT", "OxfordPets", "FGVCAircraft", "ImageNet"):
        source = open_dataset(str(root / expected[name].folder), split="train")
        config = resolve_config(method, source)
        field = "templates" if method == "zeroshot" else "template"
        want = METHOD_TEMPLATES.get((method, name), expected[name].template)
        assert getattr(config, field) == ((want,) if method == "zeroshot" else want)
    # an explicit override still wins over the data set's template
    dtd = open_dataset(str(root / "dtd"), split="train")
    if method != "zeroshot":
        assert resolve_config(method, dtd, {"template": "art of {}."}).template == "art of {}."  # type: ignore[attr-defined]


def crop_scale_of(transform: object) -> tuple[float, float]:
    crops = [t for t in transform.transforms if isinstance(t, T.RandomResizedCrop)]  # type: ignore[attr-defined]
    assert len(crops) == 1
    return tuple(crops[0].scale)  # type: ignore[return-value]


def test_point_4_the_crop_scale_is_dassls_on_real_data(
    benchmark_root: tuple[Path, dict[str, Expected]], tiny_backbone: Backbone
) -> None:
    root, _ = benchmark_root
    assert crop_scale_of(train_transform(tiny_backbone.preprocess)) == (0.08, 1.0)
    real = open_dataset(str(root / "eurosat"), split="train")
    assert resolve_config("coop", real).crop_scale == (0.08, 1.0)
    # the synthetic world keeps the recipe the mini presets were tuned with, presets still win
    synthetic = open_dataset("synthetic:color-shape-base?n=2", split="train")
    assert resolve_config("coop", synthetic).crop_scale == (0.5, 1.0)
    assert resolve_config("dcp", synthetic, preset="mini").lr_schedule == "step"
    assert resolve_config("coop", synthetic, {"crop_scale": [0.3, 1]}).crop_scale == (0.3, 1.0)


def test_point_5_imagenet_aircraft_and_variant_readers(
    benchmark_root: tuple[Path, dict[str, Expected]],
) -> None:
    root, _ = benchmark_root
    imagenet = open_dataset(str(root / "imagenet"), split="test")
    for item in imagenet.items:  # the wnid folder decides the class, via classnames.txt
        assert item.path is not None
        assert item.path.parts[-3] == "val"
        assert dict(IMAGENET)[item.path.parent.name] == item.label
    aircraft = open_dataset(str(root / "fgvc_aircraft"), split="val")
    lines = (root / "fgvc_aircraft" / "images_variant_val.txt").read_text().splitlines()
    assert [(item.path.stem, item.label) for item in aircraft.items] == [  # type: ignore[union-attr]
        tuple(line.split(" ", 1)) for line in lines
    ]
    assert aircraft.class_names == AIRCRAFT  # label = line of variants.txt
    v2 = open_dataset(str(root / "imagenetv2"), split="test")
    for item in v2.items:  # folder <label> holds the label-th class of classnames.txt
        assert item.path is not None
        assert IMAGENET[int(item.path.parent.name)][1] == item.label
    adversarial = open_dataset(str(root / "imagenet-adversarial"), split="test")
    assert len(adversarial.class_names) == len(IMAGENET_A) < len(IMAGENET)  # a class subset
    with pytest.raises(DataError, match="test-only"):
        open_dataset(str(root / "imagenet-rendition"), split="train")


def test_dassl_schedule_steps_per_epoch() -> None:
    config = make_config("coop", {"lr": 0.002, "epochs": 5})
    rates = [epoch_learning_rate(epoch, config) for epoch in range(5)]
    cosine = [0.001 * (1 + math.cos(math.pi * k / 5)) for k in range(4)]
    assert rates == pytest.approx([1e-5, *cosine])


def test_layout_errors_name_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "dtd").mkdir()
    with pytest.raises(DataError, match="split_zhou_DescribableTextures.json"):
        benchmark_path("DTD", tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        benchmark_path("EuroSAT", tmp_path)


def test_protocol_report_by_name_names_classes_template_and_recipe(
    benchmark_root: tuple[Path, dict[str, Expected]], tmp_path: Path
) -> None:
    root, expected = benchmark_root
    common = ["--protocol", "base2novel", "--method", "coop", "--backbone", "tiny"]
    common += ["--shots", "2", "--seeds", "1", "--epochs", "1", "--set", "batch_size=4"]
    by_name, by_path = tmp_path / "name.json", tmp_path / "path.json"
    assert main(["eval", *common, "--dataset", "Flowers102", "--data-root", str(root),
                 "--json", str(by_name)]) == 0  # fmt: skip
    assert main(["eval", *common, "--data", str(root / "oxford_flowers"),
                 "--json", str(by_path)]) == 0  # fmt: skip
    report = json.loads(by_name.read_text())
    names = expected["OxfordFlowers"].names
    assert report["classes"]["base"] == names[:3]
    assert report["classes"]["novel"] == names[3:]
    assert report["datasets"]["train"] == "OxfordFlowers"
    assert report["recipe"]["epochs"] == 1
    assert report["recipe"]["crop_scale"] == [0.08, 1.0]
    assert {"optimizer", "lr", "batch_size", "lr_schedule", "drop_last"} <= set(report["recipe"])
    other = json.loads(by_path.read_text())
    assert (other["classes"], other["recipe"]) == (report["classes"], report["recipe"])


@pytest.mark.parametrize("method", ["provp", "sep"])
def test_cross_data_set_targets_use_their_own_template(
    method: str, benchmark_root: tuple[Path, dict[str, Expected]], tmp_path: Path
) -> None:
    root, expected = benchmark_root
    out = tmp_path / "cross.json"
    args = ["eval", "--protocol", "cross", "--method", method, "--backbone", "tiny"]
    args += ["--dataset", "ImageNet", "--data-root", str(root), "--target", "DTD"]
    args += ["--target", "EuroSAT", "--target", "StanfordCars", "--shots", "1", "--seeds", "1"]
    args += ["--epochs", "1", "--set", "batch_size=4", "--json", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["template"]["train"] == report["template"]["source"] == "a photo of a {}."
    for target in ("DescribableTextures", "EuroSAT", "StanfordCars"):
        # the method's own template where its release has one (SEP on Cars, whose CoOp
        # template is ImageNet's), else the target's
        want = METHOD_TEMPLATES.get((method, target), expected[target].template)
        assert report["template"][target] == want
    assert report["template"]["DescribableTextures"] != expected["DescribableTextures"].template
    assert report["classes"]["EuroSAT"] == expected["EuroSAT"].names


def test_the_last_partial_batch_is_dropped_on_real_data(
    benchmark_root: tuple[Path, dict[str, Expected]], tmp_path: Path
) -> None:
    root, _ = benchmark_root
    request = TrainRequest(
        method="coop", data=str(root / "dtd"), store=tmp_path, name="dtd", backbone="tiny",
        shots=2, overrides={"epochs": 2, "batch_size": 4},
    )  # fmt: skip
    fitted = fit_learner(request)
    # 5 classes x 2 shots = 10 images: 2 full batches of 4, the partial one is dropped
    assert fitted.result.steps == 2 * 2


def test_reproduce_script_plans_on_the_miniature_roots(
    benchmark_root: tuple[Path, dict[str, Expected]],
) -> None:
    root, _ = benchmark_root
    script = Path(__file__).resolve().parents[2] / "bench" / "reproduce.py"
    args = [sys.executable, str(script), "--data-root", str(root), "--dry-run"]
    args += ["--methods", "provp", "coop", "--datasets", "DTD", "ImageNet"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "base2novel · provp · DescribableTextures · preset base2novel" in out
    assert "template: a texture of {}." in out  # ProVP's own template for DTD
    assert "template '{} texture.'" in out  # what coop's test sets name
    assert "base2novel · coop · ImageNet · preset cocoop_base2novel_imagenet" in out
    assert "test novel: 4 classes [electric ray, stingray, rooster, hen]" in out
    assert "transfer · provp · ImageNet" in out
    assert "test ImageNetA: 3 classes" in out
    assert "6 runs x 3 seeds planned; nothing trained" in out
