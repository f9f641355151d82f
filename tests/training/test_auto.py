"""method=auto: validation folds from the training images, the budget, the choice, the
leaderboard in the manifest, and the CLI and protocol entry points.

The candidate table is shortened by monkeypatching (`candidates`): every fit on `mini` costs
seconds on a CPU, and publishing a version costs more.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from promptserve.models.errors import ConfigError, UnknownMethodError
from promptserve.models.integrity import verify_artifact
from promptserve.training import api, auto
from promptserve.training.api import TrainRequest, fit_learner
from promptserve.training.auto import Candidate, check_method, validation_folds
from promptserve.training.cli import main
from promptserve.training.data import open_dataset
from promptserve.training.errors import DataError
from tests.helpers import make_image_folder

PLAIN = "synthetic:color-shape?classes=8&n=8"  # names mini reads: zero-shot is near perfect
ZEROSHOT = Candidate("zeroshot", "zeroshot")
# listed first, so it would win any tie: a coop whose context one step at lr 1000 has wrecked
WRECKED = Candidate("wrecked", "coop", {"lr": 1000.0, "epochs": 1})
QUICK_COOP = Candidate("coop", "coop", {"epochs": 1})
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220)}


def candidates(monkeypatch: pytest.MonkeyPatch, *table: Candidate) -> None:
    monkeypatch.setattr(auto, "CANDIDATES", table)


def request(data: str, store: Path, **fields: Any) -> TrainRequest:
    values: dict[str, Any] = {"shots": 8} | fields
    return TrainRequest(method="auto", data=data, store=store, name="auto", **values)


def keys(source: Any) -> set[str]:
    return {item.key for item in source.items}


def test_a_quarter_of_each_class_is_held_out_when_classes_have_8_images() -> None:
    train = open_dataset("synthetic:color-shape?classes=4&n=12", split="train")
    [(fit_part, val)] = validation_folds(train, seed=1)
    assert Counter(item.label for item in val.items) == dict.fromkeys(train.class_names, 3)
    assert keys(fit_part) | keys(val) == keys(train)
    assert not keys(fit_part) & keys(val)
    test = open_dataset("synthetic:color-shape?classes=4&n=12", split="test")
    assert not keys(val) & keys(test)
    assert validation_folds(train, seed=2)[0][1].items != val.items  # the seed draws the part


def test_few_images_are_cross_validated_each_image_once() -> None:
    train = open_dataset("synthetic:color-shape?classes=3&n=3", split="train")
    folds = validation_folds(train, seed=1)
    assert len(folds) == 3  # the fewest images of a class
    for fit_part, val in folds:
        assert Counter(item.label for item in val.items) == dict.fromkeys(train.class_names, 1)
        assert not keys(fit_part) & keys(val)
    assert Counter(key for _, val in folds for key in keys(val)) == dict.fromkeys(keys(train), 1)


def test_one_image_in_a_class_cannot_be_validated() -> None:
    with pytest.raises(DataError, match="at least 2 training images"):
        validation_folds(open_dataset("synthetic:color-shape?classes=3&n=1"), seed=1)


def test_auto_trains_and_scores_on_training_images_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[set[str]] = []  # the images of every fit and every validation, in order

    def recorded(function: Any) -> Any:
        def call(first: Any, source: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append(keys(source))
            return function(first, source, *args, **kwargs)

        return call

    monkeypatch.setattr(auto, "fit_source", recorded(auto.fit_source))
    monkeypatch.setattr(api, "fit_source", recorded(api.fit_source))
    monkeypatch.setattr(auto, "accuracy_on", recorded(auto.accuracy_on))
    candidates(monkeypatch, ZEROSHOT)
    fitted = fit_learner(request("synthetic:color-shape?classes=4&n=12", tmp_path))
    train = keys(open_dataset("synthetic:color-shape?classes=4&n=12", split="train"))
    test = keys(open_dataset("synthetic:color-shape?classes=4&n=12", split="test"))
    assert len(seen) == 3  # one fold's fit and validation, then the winner on everything
    assert all(part <= train and not part & test for part in seen)
    assert seen[2] == keys(fitted.train)
    assert len(seen[2]) == 4 * 8  # the 8-shot sample


def test_the_best_on_validation_wins_and_the_leaderboard_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    candidates(monkeypatch, WRECKED, ZEROSHOT, Candidate("absent", "no_such_method"))
    fitted = fit_learner(request(PLAIN, tmp_path))
    board = fitted.auto
    assert board is not None
    wrecked, zeroshot, absent = board["candidates"]
    assert zeroshot["val_accuracy"] > wrecked["val_accuracy"] + 10
    assert board["winner"] == "zeroshot"
    assert fitted.learner.method_name == "zeroshot"  # what is trained on all images
    assert "best validation accuracy" in board["reason"]
    assert absent["skipped"] == "method 'no_such_method' is not registered"
    assert board["validation"] == {"folds": 1, "images": 8 * 2, "scheme": "holdout"}
    assert all(entry["seconds"] > 0 for entry in (wrecked, zeroshot))


def test_on_names_mini_cannot_read_the_linear_probe_beats_zeroshot(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    probe = Candidate("linear_probe", "linear_probe", {"epochs": 5})
    candidates(monkeypatch, ZEROSHOT, probe)
    fitted = fit_learner(request("synthetic:color-shape?names=catalogue&classes=8&n=8", tmp_path))
    assert fitted.auto is not None
    zeroshot, linear = fitted.auto["candidates"]
    assert zeroshot["val_accuracy"] <= 40  # near chance (12.5 %): "item r7" means nothing
    assert linear["val_accuracy"] >= zeroshot["val_accuracy"] + 30
    assert fitted.auto["winner"] == "linear_probe"
    assert fitted.learner.method_name == "linear_probe"


def test_each_candidate_takes_its_own_preset(tmp_path: Path) -> None:
    presets = {c.label: r.preset for c, r in auto.candidate_requests(request(PLAIN, tmp_path))}
    assert presets == {
        "zeroshot": None,
        "linear_probe": "mini",
        "provp": "mini",
        "coop": "mini",
        "coop_csc": "mini_csc",
    }
    other = request(PLAIN, tmp_path, backbone="tiny")
    assert {r.preset for _, r in auto.candidate_requests(other)} == {None}


def test_a_tie_goes_to_the_cheaper_candidate() -> None:
    board = [
        {"label": "a", "val_accuracy": 50.0},
        {"label": "b", "skipped": "budget"},
        {"label": "c", "val_accuracy": 75.0},
        {"label": "d", "val_accuracy": 75.0},
    ]
    winner, why = auto.choose(board, images=10_000)
    assert winner["label"] == "c"
    assert why == "best validation accuracy (75.00 %), tied with d: the cheaper"


def test_a_costlier_candidate_must_win_by_more_than_one_standard_error() -> None:
    board = [
        {"label": "zeroshot", "val_accuracy": 6.25},
        {"label": "linear_probe", "val_accuracy": 95.31},  # one image of 64 fewer
        {"label": "coop_csc", "val_accuracy": 96.88},
    ]
    winner, why = auto.choose(board, images=64)  # one standard error: about 2.9 points
    assert winner["label"] == "linear_probe"
    assert "within one standard error" in why
    assert "coop_csc at 96.88 %" in why
    # on ten times the images the same gap is several errors: the better one wins
    winner, why = auto.choose(board, images=6400)
    assert winner["label"] == "coop_csc"
    assert why == "best validation accuracy (96.88 %)"
    # a perfect score still has an error: one image of 64 short of it is within it
    perfect = [{"label": "probe", "val_accuracy": 98.44}, {"label": "csc", "val_accuracy": 100.0}]
    assert auto.choose(perfect, images=64)[0]["label"] == "probe"


def test_candidates_past_the_budget_are_skipped_but_zeroshot_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    candidates(monkeypatch, QUICK_COOP, ZEROSHOT)
    fitted = fit_learner(request(PLAIN, tmp_path, auto_budget_s=1e-9))
    assert fitted.auto is not None
    coop, zeroshot = fitted.auto["candidates"]
    assert coop["skipped"].startswith("budget: ")
    assert "of 1e-09 s spent" in coop["skipped"]
    assert "val_accuracy" in zeroshot
    assert fitted.auto["winner"] == "zeroshot"


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"overrides": {"lr": 0.1}}, r"no config overrides \(lr\)"),
        ({"preset": "mini"}, "no preset"),
        ({"auto_budget_s": 0.0}, "positive"),
    ],
)
def test_auto_refuses_what_belongs_to_one_method(
    fields: dict[str, Any], words: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=words):
        auto.candidate_requests(request(PLAIN, tmp_path, **fields))


def test_a_method_name_is_registered_or_auto() -> None:
    check_method("auto")
    check_method("coop")
    with pytest.raises(UnknownMethodError, match="coop.*or auto"):
        check_method("automatic")


def test_the_cli_publishes_the_winner_with_its_leaderboard(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    candidates(monkeypatch, WRECKED, ZEROSHOT)
    args = ["train", "--method", "auto", "--data", PLAIN, "--shots", "8"]
    assert main([*args, "--store", str(tmp_path), "--name", "auto"]) == 0
    manifest = verify_artifact(tmp_path / "auto" / "1")
    board = manifest["training"]["auto"]
    assert manifest["method"] == board["winner"] == "zeroshot"
    assert [entry["label"] for entry in board["candidates"]] == ["wrecked", "zeroshot"]
    out = capsys.readouterr().out
    assert "auto: chose zeroshot, best validation accuracy" in out
    assert main([*args, "--store", str(tmp_path), "--name", "x", "--set", "lr=0.1"]) == 2
    assert "method auto takes no config overrides (lr)" in capsys.readouterr().err


def test_the_fewshot_protocol_records_each_seeds_choice(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_image_folder(tmp_path / "train", COLOURS, per_class=3, seed=1)
    make_image_folder(tmp_path / "test", COLOURS, per_class=2, seed=2)
    candidates(monkeypatch, ZEROSHOT, QUICK_COOP)
    out = tmp_path / "report.json"
    args = ["eval", "--protocol", "fewshot", "--method", "auto", "--data", str(tmp_path)]
    assert main([*args, "--shots", "2", "--seeds", "1", "2", "--json", str(out)]) == 0
    assert "seed 2 auto: 2-fold validation on 6 images" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["method"] == "auto"
    assert [chosen["seed"] for chosen in report["auto"]] == [1, 2]
    for chosen in report["auto"]:
        assert chosen["validation"] == {"folds": 2, "images": 3 * 2, "scheme": "2-fold"}
        assert [entry["label"] for entry in chosen["candidates"]] == ["zeroshot", "coop"]
    assert 0 <= report["accuracy"] <= 100
