"""The classifier artifact: layout, manifest, parity, publication, verification, round trips.

Every registered method is exported once per module and the read-only tests share those
artifacts: the dynamo ONNX export is the slow part (several CPU seconds even on the tiny
backbone), so beyond one export per method the file runs only two more.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import Tensor, nn

from promptserve.models import artifact, versions
from promptserve.models.artifact import (
    list_versions,
    publish_classifier,
    read_manifest,
    resolve_version,
)
from promptserve.models.classifier import load_classifier
from promptserve.models.errors import ArtifactError, ExportParityError
from promptserve.models.export import export_visual_graph
from promptserve.models.integrity import verify_artifact
from promptserve.models.labels import load_learner
from promptserve.models.methods import Learner, create_method
from tests import helpers

CLASS_NAMES = ["red circle", "blue square", "green star", "yellow heart"]
FIVE_FILES = {
    "manifest.json",
    "classes.safetensors",
    "visual.onnx",
    "visual.torchscript.pt",
    "learner.safetensors",
}


@dataclasses.dataclass
class Exported:
    learner: Learner
    path: Path
    was_training_after: bool


@pytest.fixture(scope="module", params=helpers.method_cases())
def exported(request, tiny_backbone, tmp_path_factory) -> Exported:  # type: ignore[no-untyped-def]
    learner = helpers.create_learner(request.param, tiny_backbone, CLASS_NAMES)
    helpers.perturb(learner, seed=0, scale=0.1)
    learner.train()
    store = tmp_path_factory.mktemp(f"store-{request.param}")
    path = publish_classifier(
        learner,
        CLASS_NAMES,
        store,
        f"tiny-{request.param}",
        training={"epochs": 0},
        metrics={"top1": 0.25},
        format_version=1,  # the self-contained layout; format 2: tests/models/test_graphs.py
    )
    return Exported(learner, path, learner.training)


@pytest.fixture
def zeroshot(tiny_backbone) -> Learner:  # type: ignore[no-untyped-def]
    return create_method("zeroshot", tiny_backbone)


def _images() -> list[Image.Image]:
    return [
        Image.new("RGB", (40, 52), (220, 30, 30)),
        Image.new("L", (64, 31), 128),  # greyscale and not square: converted and cropped
        Image.new("RGBA", (32, 32), (20, 30, 200, 255)),
    ]


# --- layout and manifest --------------------------------------------------------------------


def test_layout_has_exactly_the_five_files(exported: Exported) -> None:
    assert {p.name for p in exported.path.iterdir()} == FIVE_FILES
    assert exported.path.name == "1"
    # the version counter and the one version: no staging left
    assert sorted(p.name for p in exported.path.parent.iterdir()) == [versions.COUNTER_FILE, "1"]


def test_manifest_records_the_export(exported: Exported) -> None:
    manifest = verify_artifact(exported.path)
    learner = exported.learner
    assert manifest == read_manifest(exported.path)
    assert manifest["format_version"] == 1
    assert manifest["name"] == exported.path.parent.name
    assert manifest["version"] == "1"
    assert manifest["created_at"].endswith("+00:00")
    assert manifest["method"] == learner.method_name
    assert manifest["config"] == json.loads(json.dumps(dataclasses.asdict(learner.config)))
    assert manifest["backbone"] == dataclasses.asdict(learner.backbone_id)
    assert manifest["preprocessing"]["size"] == learner.preprocess.size
    assert manifest["class_names"] == CLASS_NAMES
    assert manifest["logit_scale"] == pytest.approx(learner.logit_scale)
    assert set(manifest["files"]) == FIVE_FILES - {"manifest.json"}
    assert manifest["training"] == {"epochs": 0}
    assert manifest["metrics"] == {"top1": 0.25}
    assert manifest["torch_version"] == torch.__version__
    assert manifest["open_clip_version"]


def test_parity_figures_are_recorded_per_engine_and_batch(exported: Exported) -> None:
    parity = read_manifest(exported.path)["parity"]
    assert parity["tolerance"] == 1e-4
    for engine in ("onnx", "torchscript"):
        assert set(parity[engine]) == {"batch_1", "batch_7"}
        # measured figures, not the gate's bound; whether the graphs really match eager is
        # measured from the files by test_onnx_matches_eager and test_torchscript_matches_eager
        assert all(isinstance(figure, float) for figure in parity[engine].values())


def test_export_restores_training_mode(exported: Exported) -> None:
    assert exported.was_training_after


def test_class_embeddings_are_normalised_and_match_the_learner(exported: Exported) -> None:
    stored = load_file(str(exported.path / "classes.safetensors"))["embeddings"]
    with torch.no_grad():
        expected = exported.learner.encode_classes(CLASS_NAMES)
    assert stored.dtype == torch.float32
    assert stored.shape == expected.shape
    torch.testing.assert_close(stored.norm(dim=-1), torch.ones(len(CLASS_NAMES)))
    torch.testing.assert_close(stored, expected, atol=0, rtol=0)


# --- the exported graphs --------------------------------------------------------------------


def test_onnx_graph_is_self_contained_with_a_dynamic_batch(exported: Exported) -> None:
    model = onnx.load(str(exported.path / "visual.onnx"), load_external_data=False)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in model.graph.input] == ["pixels"]
    assert [o.name for o in model.graph.output] == ["embeddings"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic, not fixed
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def test_torchscript_holds_only_the_visual_weights(exported: Exported) -> None:
    # a plain trace of VisualGraph would also carry the text tower it never runs
    onnx_size = (exported.path / "visual.onnx").stat().st_size
    assert (exported.path / "visual.torchscript.pt").stat().st_size < 1.5 * onnx_size


@pytest.mark.parametrize("batch", [1, 7, 32])
def test_onnx_matches_eager(exported: Exported, batch: int) -> None:
    session = ort.InferenceSession(
        str(exported.path / "visual.onnx"), providers=["CPUExecutionProvider"]
    )
    pixels = helpers.pixels(batch, exported.learner.preprocess.size, seed=1)
    (out,) = session.run(None, {"pixels": pixels.numpy()})
    with torch.no_grad():
        expected = exported.learner.eval().encode_images(pixels).numpy()
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("batch", [1, 7, 32])
def test_torchscript_matches_eager(exported: Exported, batch: int) -> None:
    classifier = load_classifier(exported.path, engine="torchscript")
    pixels = helpers.pixels(batch, exported.learner.preprocess.size, seed=1)
    with torch.no_grad():
        expected = exported.learner.eval().encode_images(pixels)
    torch.testing.assert_close(classifier.embed(pixels), expected, atol=1e-4, rtol=0)


def test_onnx_and_torchscript_engines_agree(exported: Exported) -> None:
    onnx_engine = load_classifier(exported.path, engine="onnx")
    ts_engine = load_classifier(exported.path, engine="torchscript")
    pixels = helpers.pixels(5, exported.learner.preprocess.size, seed=3)
    torch.testing.assert_close(
        onnx_engine.embed(pixels), ts_engine.embed(pixels), atol=1e-4, rtol=0
    )
    ranked_onnx = onnx_engine.classify(_images(), top_k=4)
    ranked_ts = ts_engine.classify(_images(), top_k=4)
    for a, b in zip(ranked_onnx, ranked_ts, strict=True):
        assert [label for label, _ in a] == [label for label, _ in b]
        np.testing.assert_allclose([p for _, p in a], [p for _, p in b], atol=1e-4)


# --- classification -------------------------------------------------------------------------


def test_classify_returns_ranked_top_k(exported: Exported) -> None:
    classifier = load_classifier(exported.path)
    assert classifier.class_names == CLASS_NAMES
    assert classifier.class_embeddings.shape[0] == len(CLASS_NAMES)
    results = classifier.classify(_images(), top_k=3)
    assert len(results) == 3
    for ranked in results:
        labels, probs = zip(*ranked, strict=True)
        assert len(ranked) == 3
        assert set(labels) <= set(CLASS_NAMES)
        assert len(set(labels)) == 3
        assert list(probs) == sorted(probs, reverse=True)
        assert all(0.0 <= p <= 1.0 for p in probs)
        assert sum(probs) <= 1.0 + 1e-6
    everything = classifier.classify(_images()[:1], top_k=10)[0]  # top_k beyond C: all of C
    assert len(everything) == len(CLASS_NAMES)
    assert sum(p for _, p in everything) == pytest.approx(1.0, abs=1e-5)


def test_classify_rejects_bad_requests(exported: Exported) -> None:
    classifier = load_classifier(exported.path)
    with pytest.raises(ValueError, match="top_k"):
        classifier.classify(_images(), top_k=0)
    with pytest.raises(ValueError, match="image"):
        classifier.classify([])


# --- verification ---------------------------------------------------------------------------


@pytest.fixture
def artifact_copy(exported: Exported, tmp_path: Path) -> Path:
    return Path(shutil.copytree(exported.path, tmp_path / "copy"))


def test_tampered_file_is_rejected(artifact_copy: Path) -> None:
    with (artifact_copy / "classes.safetensors").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ArtifactError, match="classes.safetensors"):
        load_classifier(artifact_copy)
    with pytest.raises(ArtifactError, match="classes.safetensors"):
        load_learner(artifact_copy)


def test_missing_file_is_rejected(artifact_copy: Path) -> None:
    (artifact_copy / "visual.onnx").unlink()
    with pytest.raises(ArtifactError, match="visual.onnx"):
        verify_artifact(artifact_copy)


def test_manifest_must_not_point_outside_the_artifact(artifact_copy: Path) -> None:
    manifest = read_manifest(artifact_copy)
    manifest["files"]["../secret"] = "0" * 64
    (artifact_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="secret"):
        verify_artifact(artifact_copy)


def test_unknown_format_and_missing_manifest_are_rejected(artifact_copy: Path) -> None:
    manifest = read_manifest(artifact_copy)
    (artifact_copy / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ArtifactError, match="format"):
        read_manifest(artifact_copy)
    (artifact_copy / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest"):
        load_classifier(artifact_copy)


def test_load_learner_refuses_a_different_backbone(artifact_copy: Path) -> None:
    manifest = read_manifest(artifact_copy)
    manifest["backbone"]["weights_sha256"] = "f" * 64
    (artifact_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="weights"):
        load_learner(artifact_copy)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_cuda_without_cuda_is_an_artifact_error(exported: Exported) -> None:
    with pytest.raises(ArtifactError, match="CUDA"):
        load_classifier(exported.path, device="cuda")


# --- checkpoint round trip ------------------------------------------------------------------


def test_load_learner_round_trip(exported: Exported) -> None:
    original = exported.learner.eval()
    restored = load_learner(exported.path)
    assert type(restored) is type(original)
    assert restored.config == original.config
    assert not restored.training
    pixels = helpers.pixels(3, original.preprocess.size, seed=5)
    with torch.no_grad():
        assert torch.equal(
            restored.encode_classes(CLASS_NAMES), original.encode_classes(CLASS_NAMES)
        )
        assert torch.equal(restored.encode_images(pixels), original.encode_images(pixels))
    state = restored.learned_state_dict()
    for name, tensor in original.learned_state_dict().items():
        assert torch.equal(state[name], tensor)


def test_learned_state_is_stored(exported: Exported) -> None:
    stored = load_file(str(exported.path / "learner.safetensors"))
    assert set(stored) == set(exported.learner.learned_state_dict())  # {} for zeroshot


# --- publication ----------------------------------------------------------------------------


class _NoisyGraph(nn.Module):
    """A visual graph whose output is not a function of its input: parity must catch it."""

    def __init__(self, learner: Learner) -> None:
        super().__init__()
        self.learner = learner

    def forward(self, pixels: Tensor) -> Tensor:
        out = self.learner.encode_images(pixels)
        return out + 1e-2 * torch.randn_like(out)


@pytest.mark.parametrize("exported", ["zeroshot"], indirect=True)
def test_failed_parity_publishes_nothing_and_versions_increase(
    exported: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zeroshot = exported.learner
    first = Path(shutil.copytree(exported.path, tmp_path / "zs" / "1"))  # a published version
    with monkeypatch.context() as patch:
        patch.setattr(zeroshot, "visual_graph", lambda: _NoisyGraph(zeroshot))
        with pytest.raises(ExportParityError, match="onnx batch 1"):
            publish_classifier(zeroshot, CLASS_NAMES, tmp_path, "zs")
    assert [p.name for p in (tmp_path / "zs").iterdir()] == ["1"]  # no version, no staging
    assert resolve_version(tmp_path, "zs", None) == first

    # a "1" the counter does not know of (copied in meanwhile): the rename fails, we take "2"
    monkeypatch.setattr(versions, "highest_version", lambda directory: 0)
    second = publish_classifier(zeroshot, CLASS_NAMES[:2], tmp_path, "zs")
    assert (first.name, second.name) == ("1", "2")
    assert read_manifest(second)["version"] == "2"
    assert read_manifest(second)["class_names"] == CLASS_NAMES[:2]
    assert read_manifest(first)["class_names"] == CLASS_NAMES  # untouched by the race
    assert list_versions(tmp_path, "zs") == ["1", "2"]
    assert resolve_version(tmp_path, "zs", None) == second
    assert resolve_version(tmp_path, "zs", "1") == first
    with pytest.raises(ArtifactError, match="no version '3'"):
        resolve_version(tmp_path, "zs", "3")


def test_failed_first_export_leaves_no_trace(
    zeroshot: Learner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail_after_writing(learner: Learner, names: list[str], staging: Path, tol: float) -> dict:
        (staging / "visual.onnx").write_bytes(b"half-written")
        raise ExportParityError("onnx batch 1: 1")

    monkeypatch.setattr(artifact, "write_files", fail_after_writing)
    with pytest.raises(ExportParityError):
        publish_classifier(zeroshot, CLASS_NAMES, tmp_path, "fresh", format_version=1)
    assert not (tmp_path / "fresh").exists()  # no version, no staging, no empty name
    assert list_versions(tmp_path, "fresh") == []
    with pytest.raises(ArtifactError, match="no published version"):
        resolve_version(tmp_path, "fresh", None)


class _PoolAndNormalise(nn.Module):
    """A trivial visual graph: exports in well under a second."""

    def forward(self, pixels: Tensor) -> Tensor:
        return F.normalize(pixels.mean(dim=(2, 3)), dim=-1)  # [B, 3]


def test_negative_tolerance_fails_the_real_check(tmp_path: Path) -> None:
    graph = _PoolAndNormalise().eval()
    figures = export_visual_graph(graph, tmp_path, image_size=8, tolerance=1e-6)
    assert figures["onnx"]["batch_7"] <= 1e-6  # type: ignore[index]
    with pytest.raises(ExportParityError, match="torchscript batch 7"):
        export_visual_graph(graph, tmp_path, image_size=8, tolerance=-1.0)


def test_list_versions_sorts_numerically_and_skips_other_entries(tmp_path: Path) -> None:
    for entry in ("2", "10", "9", ".tmp-abc", "01", "latest"):
        (tmp_path / "c" / entry).mkdir(parents=True)
    (tmp_path / "c" / "11").write_text("a file, not a version")
    assert list_versions(tmp_path, "c") == ["2", "9", "10"]
    assert resolve_version(tmp_path, "c", None).name == "10"
    assert list_versions(tmp_path, "absent") == []
    assert versions.highest_version(tmp_path / "c") == 11  # a stray "11" still blocks that name


@pytest.mark.parametrize(
    "name", ["../x", "a/b", "/abs", "", ".hidden", "-x", "a b", "x\n", "a" * 65, "ü"]
)
def test_unsafe_names_are_rejected(zeroshot: Learner, tmp_path: Path, name: str) -> None:
    with pytest.raises(ArtifactError, match="invalid classifier name"):
        publish_classifier(zeroshot, CLASS_NAMES, tmp_path / "store", name)
    with pytest.raises(ArtifactError, match="invalid classifier name"):
        resolve_version(tmp_path / "store", name, None)
    assert not (tmp_path / "store").exists()


def test_unsafe_version_is_not_resolved(tmp_path: Path) -> None:
    (tmp_path / "c" / "1").mkdir(parents=True)
    with pytest.raises(ArtifactError, match="no version"):
        resolve_version(tmp_path, "c", "../c/1")


@pytest.mark.parametrize(
    ("class_names", "extra"),
    [([], {}), (["a", "a"], {}), (["a", " "], {}), (["a"], {"training": {"when": object()}})],
)
def test_bad_export_inputs_are_rejected_before_any_work(
    zeroshot: Learner, tmp_path: Path, class_names: list[str], extra: dict
) -> None:
    with pytest.raises(ArtifactError):
        publish_classifier(zeroshot, class_names, tmp_path, "c", **extra)
    assert not (tmp_path / "c").exists()
