"""Triton export: the model repository's config.pbtxt parses with Triton's own protobuf schema
(tritonclient's model_config_pb2), and the ONNX graph in it answers what the classifier does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from promptserve.models.artifact import publish_classifier
from promptserve.models.classifier import load_classifier
from promptserve.models.errors import ArtifactError
from promptserve.models.methods import create_method
from promptserve.models.triton import export_triton
from promptserve.service.cli import main

CLASSES = ["red circle", "blue square", "green star"]


@pytest.fixture(scope="module")
def store(tiny_backbone, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("store")
    learner = create_method("zeroshot", tiny_backbone)
    publish_classifier(learner, CLASSES, root, "shapes")
    publish_classifier(learner, CLASSES, root, "shapes")
    publish_classifier(learner, CLASSES[:2], root, "shapes")
    return root


def parse_config(path: Path):  # type: ignore[no-untyped-def]
    model_config_pb2 = pytest.importorskip(
        "tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] is absent (dev extra)"
    )
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_the_config_parses_with_tritons_schema(store: Path, tmp_path: Path) -> None:
    model = export_triton(store / "shapes" / "1", tmp_path, max_batch_size=32)
    config = parse_config(model / "config.pbtxt")
    assert config.name == "shapes"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 32
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16, 32]
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    (pixels,) = config.input
    size = load_classifier(store / "shapes" / "1").preprocess.size
    assert list(pixels.dims) == [3, size, size]
    outputs = {o.name: o for o in config.output}
    assert list(outputs["logits"].dims) == [3]
    assert outputs["logits"].label_filename == "labels.txt"
    assert (model / "labels.txt").read_text().splitlines() == CLASSES
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU


def test_the_graph_scores_like_the_classifier(store: Path, tmp_path: Path) -> None:
    model = export_triton(store / "shapes" / "1", tmp_path)
    classifier = load_classifier(store / "shapes" / "1")
    size = classifier.preprocess.size
    pixels = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(0))
    config = parse_config(model / "config.pbtxt")
    session = ort.InferenceSession(str(model / "1" / "model.onnx"))
    embeddings, logits = session.run(
        ["embeddings", "logits"], {config.input[0].name: pixels.numpy()}
    )
    expected = classifier.embed(pixels)  # [B, D]
    np.testing.assert_allclose(embeddings, expected.numpy(), atol=1e-4)
    scores = classifier.logit_scale * expected @ classifier.class_embeddings.T
    np.testing.assert_allclose(logits, scores.numpy(), atol=1e-3)


def test_versions_sit_side_by_side_and_another_label_set_is_refused(
    store: Path, tmp_path: Path
) -> None:
    export_triton(store / "shapes" / "1", tmp_path)
    model = export_triton(store / "shapes" / "2", tmp_path)
    assert sorted(p.name for p in model.iterdir() if p.is_dir()) == ["1", "2"]
    with pytest.raises(ArtifactError, match="another config or label set"):
        export_triton(store / "shapes" / "3", tmp_path)
    renamed = export_triton(store / "shapes" / "3", tmp_path, model_name="shapes2")
    assert parse_config(renamed / "config.pbtxt").name == "shapes2"


def test_the_export_command_writes_a_repository(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "repo"
    argv = ["export", "shapes:2", str(out), "--store", str(store), "--triton"]
    assert main([*argv, "--instance-kind", "KIND_CPU"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "shapes")
    config = parse_config(out / "shapes" / "config.pbtxt")
    assert config.instance_group[0].kind == config.instance_group[0].KIND_CPU
    assert (out / "shapes" / "2" / "model.onnx").is_file()
    assert main(["export", "nope", str(out), "--store", str(store)]) == 2
    assert main(["export", "shapes", str(tmp_path / "copy"), "--store", str(store)]) == 0
    assert (tmp_path / "copy" / "manifest.json").is_file()  # a self-contained artifact
