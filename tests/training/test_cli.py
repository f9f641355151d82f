"""The CLI end to end, in-process: train -> artifact -> eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from promptserve.models.classifier import load_classifier
from promptserve.models.integrity import verify_artifact
from promptserve.models.versions import COUNTER_FILE
from promptserve.training.cli import main
from tests.helpers import make_image_folder

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220)}


def train_args(method: str, data: Path, store: Path, *extra: str) -> list[str]:
    return [
        *("train", "--method", method, "--data", str(data), "--store", str(store)),
        *("--name", "colours", "--backbone", "tiny", *extra),
    ]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    train = make_image_folder(root / "train", COLOURS, per_class=6, seed=1)
    test = make_image_folder(root / "test", COLOURS, per_class=4, seed=2)
    return train, test


@pytest.mark.parametrize("method", ["zeroshot", "coop"])
def test_train_then_eval(method: str, folders: tuple[Path, Path], tmp_path: Path) -> None:
    train, test = folders
    store = tmp_path / "store"
    args = train_args(
        method,
        train,
        store,
        "--shots",
        "4",
        "--seed",
        "1",
        "--epochs",
        "2",
        "--set",
        "batch_size=4",
    )
    assert main(args) == 0
    manifest = verify_artifact(store / "colours" / "1")
    assert manifest["method"] == method
    assert manifest["class_names"] == ["blue", "green", "red"]
    assert manifest["training"]["steps"] == (0 if method == "zeroshot" else 2 * 3)
    out = tmp_path / "eval.json"
    eval_args = ["eval", "--store", str(store), "--name", "colours", "--data", str(test)]
    assert main([*eval_args, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == 12
    # the share of test images the published classifier (its exported graph) ranks first,
    # counted here through the Python API
    classifier = load_classifier(store / "colours" / "1")
    images = sorted(test.glob("*/*.png"))
    ranked = classifier.classify([Image.open(path).convert("RGB") for path in images], top_k=1)
    right = sum(top[0].label == path.parent.name for top, path in zip(ranked, images, strict=True))
    assert result["accuracy"] == pytest.approx(100.0 * right / len(images), abs=0.006)
    assert main(args) == 0  # a second run publishes version 2 beside the first
    assert sorted(p.name for p in (store / "colours").iterdir()) == [COUNTER_FILE, "1", "2"]


def test_train_heldout_scores_the_left_out_images(
    folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = ("--shots", "4", "--epochs", "1", "--heldout")
    assert main(train_args("coop", folders[0], tmp_path, *extra)) == 0
    metrics = verify_artifact(tmp_path / "colours" / "1")["metrics"]
    assert metrics["heldout_images"] == 3 * 2  # 6 per class, 4 trained on
    assert {"train_accuracy", "heldout_accuracy", "heldout_zeroshot_accuracy"} <= set(metrics)
    assert f"heldout_accuracy {metrics['heldout_accuracy']}" in capsys.readouterr().out


def test_unknown_config_field_is_a_clear_error(
    folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(train_args("coop", folders[0], tmp_path, "--set", "n_context=4")) == 2
    err = capsys.readouterr().err
    assert "n_context" in err
    assert "n_ctx" in err  # the message lists the valid fields
    assert not (tmp_path / "colours").exists()


def test_missing_data_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(train_args("coop", tmp_path / "nowhere", tmp_path)) == 2
    assert "nowhere" in capsys.readouterr().err


def test_eval_of_an_unknown_classifier_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", "--store", str(tmp_path), "--name", "ghost", "--data", str(tmp_path)]) == 2
    assert "ghost" in capsys.readouterr().err


def test_eval_without_a_target_explains_itself(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--name", "x"]) == 2
    assert "--store" in capsys.readouterr().err


def test_unknown_method_exits_nonzero() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--method", "nope", "--data", "x", "--store", "s", "--name", "n"])
    assert exc.value.code != 0
