"""The per-method template table: ProVP's and SEP's own templates for some data sets, layered
data < method < preset < --set, in training and when a test set is scored with its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptserve.models.backbone import Backbone
from promptserve.models.methods import create_method, get_method, list_methods
from promptserve.training.benchmarks import BENCHMARKS, get_benchmark
from promptserve.training.data import open_dataset
from promptserve.training.recipe import config_for, evaluated_with, resolve_config, template_of
from promptserve.training.request import TrainRequest
from promptserve.training.templates import METHOD_TEMPLATES
from tests.benchmark_roots import Expected, make_benchmark_root

Root = tuple[Path, dict[str, Expected]]


@pytest.fixture(scope="module")
def benchmark_root(tmp_path_factory: pytest.TempPathFactory) -> Root:
    root = tmp_path_factory.mktemp("DATA")
    return root, make_benchmark_root(root)


def test_the_table_names_registered_methods_and_data_sets_with_new_templates() -> None:
    assert {method for method, _ in METHOD_TEMPLATES} == {"provp", "sep"}
    for (method, dataset), template in METHOD_TEMPLATES.items():
        assert method in list_methods()
        assert get_benchmark(dataset).name == dataset  # the Dassl name, not an alias
        assert template.count("{}") == 1
        assert template != get_benchmark(dataset).template  # an entry only where they differ
    provp = {d for m, d in METHOD_TEMPLATES if m == "provp"}
    sep = {d for m, d in METHOD_TEMPLATES if m == "sep"}
    assert provp == {
        "OxfordPets",
        "OxfordFlowers",
        "FGVCAircraft",
        "Food101",
        "DescribableTextures",
    }
    assert sep == {"FGVCAircraft", "DescribableTextures", "StanfordCars", "Food101"}


@pytest.mark.parametrize(("key", "template"), sorted(METHOD_TEMPLATES.items()))
def test_every_entry_reaches_the_config_of_a_run_on_that_data_set(
    key: tuple[str, str], template: str, benchmark_root: Root
) -> None:
    method, dataset = key
    root, expected = benchmark_root
    data = str(root / expected[dataset].folder)
    source = open_dataset(data, split="train")
    assert source.dataset == dataset
    for backbone in ("mini", "tiny"):  # with the backbone's own preset, and without one
        request = TrainRequest(method=method, data=data, store=root, name="x", backbone=backbone)
        assert config_for(request, source).template == template  # type: ignore[attr-defined]


def test_the_layers_are_data_then_method_then_preset_then_set(
    benchmark_root: Root, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = benchmark_root
    dtd = open_dataset(str(root / "dtd"), split="train")
    assert resolve_config("pmpo", dtd).template == "{} texture."  # type: ignore[attr-defined]
    assert resolve_config("provp", dtd).template == "a texture of {}."  # type: ignore[attr-defined]
    # a preset that sets no template keeps the method's
    assert resolve_config("provp", dtd, preset="base2novel").template == "a texture of {}."  # type: ignore[attr-defined]
    monkeypatch.setitem(get_method("provp").presets, "art", {"template": "art of {}."})
    assert resolve_config("provp", dtd, preset="art").template == "art of {}."  # type: ignore[attr-defined]
    chosen = resolve_config("provp", dtd, {"template": "a {} weave."}, preset="art")
    assert chosen.template == "a {} weave."  # type: ignore[attr-defined]
    request = TrainRequest(
        method="provp", data=str(root / "dtd"), store=root, name="x", preset="art",
        overrides={"template": "a {} weave."},
    )  # fmt: skip
    assert config_for(request, dtd).template == "a {} weave."  # type: ignore[attr-defined]


def test_other_methods_and_data_sets_keep_the_data_sets_template(benchmark_root: Root) -> None:
    root, expected = benchmark_root
    checked = 0
    for entry in BENCHMARKS:
        split = "test" if entry.test_only else "train"
        source = open_dataset(str(root / expected[entry.name].folder), split=split)
        for method in list_methods():
            if (method, entry.name) in METHOD_TEMPLATES:
                continue
            used = template_of(resolve_config(method, source))
            assert used in (None, entry.template, [entry.template]), (method, entry.name)
            checked += used is not None
    assert checked >= 4 * len(BENCHMARKS) - len(METHOD_TEMPLATES)  # zeroshot, provp, sep, pmpo


def test_a_test_set_is_scored_with_the_methods_template_for_its_data_set(
    benchmark_root: Root, tiny_backbone: Backbone
) -> None:
    root, _ = benchmark_root
    imagenet = open_dataset(str(root / "imagenet"), split="train")
    cars = open_dataset(str(root / "stanford_cars"), split="test")
    assert cars.template == imagenet.template  # CoOp prompts both alike; SEP does not
    learner = create_method("sep", tiny_backbone, resolve_config("sep", imagenet))
    with evaluated_with(learner, cars):
        assert learner.config.template == "a photo of a {}, a type of car."  # type: ignore[attr-defined]
    assert learner.config.template == "a photo of a {}."  # type: ignore[attr-defined]
