"""Reduced engine precisions (int8, bf16) on the committed `mini` backbone: each serves behind
its accuracy gate, a broken one falls back to float32 (logged and counted in /metrics), and bf16
is refused where the CPU has no bf16 instructions."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from promptserve.models import precision, precision_gate
from promptserve.models.artifact import publish_classifier
from promptserve.models.backbone import load_backbone
from promptserve.models.classifier import load_classifier
from promptserve.models.engine_pool import EnginePool
from promptserve.models.errors import PrecisionError
from promptserve.models.methods import create_method
from promptserve.models.precision_gate import GateThresholds, run_gate
from promptserve.service.catalog import Catalog
from promptserve.service.classify.cache import ClassifierCache
from promptserve.service.metrics import Metrics, add_precision_metrics
from promptserve.service.settings import Settings
from tests import helpers

NAMES = ["red circle", "blue square", "green star", "yellow triangle"]
BF16 = precision.bf16_problem()
GATE = GateThresholds(images=16)  # tiny: the fixed set's first 16 images


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zero-shot classifier on mini (format 2: on the backbone's shared plain graph)."""
    root = tmp_path_factory.mktemp("precision-store")
    publish_classifier(create_method("zeroshot", load_backbone("mini")), NAMES, root, "zs")
    return root


def _embeddings(classifier_engine: object, size: int) -> torch.Tensor:
    pixels = helpers.pixels(6, size)
    return classifier_engine(pixels)  # type: ignore[operator,no-any-return]


@pytest.mark.parametrize(
    "kind",
    ["int8", pytest.param("bf16", marks=pytest.mark.skipif(BF16 is not None, reason=str(BF16)))],
)
def test_each_precision_serves_after_passing_its_gate(store: Path, kind: str) -> None:
    pool = EnginePool()
    full = load_classifier(store / "zs" / "1", engines=pool)
    reduced = load_classifier(store / "zs" / "1", engines=pool, precision=kind, gate=GATE)
    gate = reduced.precision_gate
    assert gate is not None
    assert gate.passed
    assert gate.served == kind
    assert gate.agreement >= GATE.min_agreement
    assert gate.min_cosine >= GATE.min_cosine
    assert reduced.engine is not full.engine  # its own engine, shared per graph
    again = load_classifier(store / "zs" / "1", engines=pool, precision=kind, gate=GATE)
    assert again.engine is reduced.engine
    size = full.preprocess.size
    ours, reference = _embeddings(reduced.embed, size), _embeddings(full.embed, size)
    assert not torch.equal(ours, reference)  # really another arithmetic
    assert float(F.cosine_similarity(ours, reference).min()) > 0.99


def test_classifiers_on_one_shared_engine_embed_the_gate_images_once(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading a classifier at a reduced precision again (or another on the same graph) reuses
    the gate's embeddings of that engine pair: the engines run for the gate only on the first
    load, and the second gets the same figures."""
    calls: list[int] = []
    real = precision_gate.embed_all

    def counted(engine: object, pixels: torch.Tensor) -> torch.Tensor:
        calls.append(int(pixels.shape[0]))
        return real(engine, pixels)  # type: ignore[arg-type]

    monkeypatch.setattr(precision_gate, "embed_all", counted)
    pool = EnginePool()
    first = load_classifier(store / "zs" / "1", engines=pool, precision="int8", gate=GATE)
    assert calls == [GATE.images, GATE.images]  # the int8 engine, then float32
    second = load_classifier(store / "zs" / "1", engines=pool, precision="int8", gate=GATE)
    assert calls == [GATE.images, GATE.images]
    assert second.engine is first.engine
    assert second.precision_gate == first.precision_gate


def _tampered(real: object) -> object:
    """`int8_graph` whose int8 weights are replaced by seeded random bytes."""

    def tampered(path: Path, calibration: torch.Tensor | None = None) -> bytes:
        model = onnx.load_from_string(real(path, calibration))  # type: ignore[operator]
        rng = np.random.default_rng(0)
        for tensor in model.graph.initializer:
            if tensor.data_type == onnx.TensorProto.INT8:
                values = onnx.numpy_helper.to_array(tensor)
                noise = rng.integers(-127, 128, values.shape, dtype=np.int8)
                tensor.CopyFrom(onnx.numpy_helper.from_array(noise, tensor.name))
        return model.SerializeToString()  # type: ignore[no-any-return]

    return tampered


def test_a_tampered_int8_graph_fails_its_gate_and_float32_serves(
    store: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(precision, "int8_graph", _tampered(precision.int8_graph))
    cache = ClassifierCache(Catalog(store), precision="int8", gate=GATE)
    metrics = Metrics()
    add_precision_metrics(metrics, cache)
    with caplog.at_level(logging.WARNING, logger="promptserve.models.precision_gate"):
        served = cache.get("zs")
    gate = served.precision_gate
    assert gate is not None
    assert not gate.passed
    assert gate.served == "fp32"
    assert gate.min_cosine < GATE.min_cosine
    assert "int8 engine failed its accuracy gate" in caplog.text
    assert "serving float32 instead" in caplog.text
    full = load_classifier(store / "zs" / "1")  # float32, on an engine of its own
    size = full.preprocess.size
    assert torch.equal(_embeddings(served.embed, size), _embeddings(full.embed, size))
    text = metrics.expose()
    assert 'promptserve_precision_gate_total{outcome="fallback",precision="int8"} 1.0' in text
    assert 'precision="int8",served="fp32",version="1"}' in text


def test_an_int8_graph_that_cannot_be_made_falls_back_to_float32(
    store: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(path: Path, calibration: torch.Tensor | None = None) -> bytes:
        raise RuntimeError("quantizer failed")

    monkeypatch.setattr(precision, "int8_graph", broken)
    with caplog.at_level(logging.WARNING, logger="promptserve.models.precision_gate"):
        served = load_classifier(store / "zs" / "1", precision="int8", gate=GATE)
    gate = served.precision_gate
    assert gate is not None
    assert gate.served == "fp32"
    assert gate.error == "quantizer failed"
    assert "int8 engine could not open (quantizer failed); serving float32" in caplog.text


def test_the_gate_counts_agreement_and_the_accuracy_change() -> None:
    classes = torch.eye(4)  # [C=4, D=4]
    pixels = torch.arange(8).remainder(4)  # stands in for images: the engine reads the label

    def full(x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(x.long(), 4).float()

    def off_by_one(x: torch.Tensor) -> torch.Tensor:  # wrong on label 3
        return F.one_hot(torch.where(x == 3, 0, x).long(), 4).float()

    result = run_gate("int8", off_by_one, full, classes, pixels, GATE, labels=pixels)
    assert result.agreement == pytest.approx(0.75)
    assert result.accuracy_change == pytest.approx(-0.25)
    assert not result.passed
    nan = run_gate("int8", lambda x: full(x) * float("nan"), full, classes, pixels, GATE)
    assert nan.min_cosine == -1.0
    assert not nan.passed


def test_bf16_is_refused_where_the_cpu_lacks_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    with pytest.raises(ValidationError, match="bf16 cannot run here.*avx512_bf16"):
        Settings(store=tmp_path, engine_precision="bf16", device="cpu")
    with pytest.raises(PrecisionError, match="avx512_bf16, amx_bf16"):
        precision.check_precision("bf16", "cpu")
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    assert Settings(store=tmp_path, engine_precision="bf16", device="cpu")


def test_reduced_precisions_are_for_the_cpu(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="int8 is for the CPU; on CUDA use onnx_fp16"):
        Settings(store=tmp_path, engine_precision="int8", device="cuda")
    with pytest.raises(PrecisionError, match="unknown precision 'int4'"):
        precision.check_precision("int4", "cpu")
