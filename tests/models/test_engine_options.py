"""ONNX Runtime engine options (IO binding, fp16, TensorRT) and the settings that choose them;
what needs CUDA is checked where it runs and skipped elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from promptserve.models.artifact import publish_classifier
from promptserve.models.engines import (
    ONNX_FILE,
    OnnxEngine,
    OnnxOptions,
    float16_graph,
    input_side,
    onnx_providers,
    warm_batch_sizes,
)
from promptserve.models.methods import create_method
from promptserve.models.providers import cuda_problem
from tests.numerics import assert_close

CUDA = torch.cuda.is_available() and cuda_problem(0) is None


@pytest.fixture(scope="module")
def artifact(tiny_backbone: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("store")
    learner = create_method("zeroshot", tiny_backbone)
    publish_classifier(
        learner, ["a", "b"], store, "tiny", training={"data": "test"}, format_version=1
    )
    return store / "tiny" / "1"


def test_io_binding_gives_the_same_embeddings(artifact: Path) -> None:
    pixels = torch.randn(3, 3, *[input_side(artifact / ONNX_FILE) or 0] * 2)
    bound = OnnxEngine(artifact / ONNX_FILE, "cpu", 1, OnnxOptions(io_binding=True))
    copied = OnnxEngine(artifact / ONNX_FILE, "cpu", 1, OnnxOptions(io_binding=False))
    assert bound.bound
    assert not copied.bound
    out = bound(pixels)
    assert out.shape == (3, bound.width)
    assert out.dtype == torch.float32
    assert_close(out, copied(pixels))
    assert_close(bound(pixels[:1]), out[:1])  # other batch


def test_fp16_is_refused_on_the_cpu(artifact: Path) -> None:
    with pytest.raises(ValueError, match="fp16 needs device 'cuda'"):
        OnnxEngine(artifact / ONNX_FILE, "cpu", options=OnnxOptions(fp16=True))


def test_the_float16_graph_keeps_float32_io_and_agrees(artifact: Path) -> None:
    import onnx

    model = onnx.load_from_string(float16_graph(artifact / ONNX_FILE))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    options = ort.SessionOptions()
    # ONNX Runtime 1.31's CPU graph optimiser crashes on this float16 graph (which is why the
    # engine allows fp16 on CUDA only); unoptimised, the CPU runs it, which checks the graph
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    half = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    full = ort.InferenceSession(str(artifact / ONNX_FILE), providers=["CPUExecutionProvider"])
    side = input_side(artifact / ONNX_FILE)
    pixels = np.random.default_rng(0).standard_normal((4, 3, side, side)).astype(np.float32)
    a, b = (s.run(None, {"pixels": pixels})[0] for s in (full, half))
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.999
    assert not np.array_equal(a, b)  # it did run in float16


def test_the_cpu_gets_the_cpu_provider_whatever_is_asked() -> None:
    assert onnx_providers(torch.device("cpu"), OnnxOptions(tensorrt=True)) == [
        "CPUExecutionProvider"
    ]


@pytest.mark.skipif(not CUDA, reason="needs CUDA and onnxruntime-gpu's CUDA provider")
@pytest.mark.parametrize("fp16", [False, True])
def test_cuda_engine_reads_device_tensors(artifact: Path, fp16: bool) -> None:
    pixels = torch.randn(4, 3, *[input_side(artifact / ONNX_FILE) or 0] * 2)
    reference = OnnxEngine(artifact / ONNX_FILE, "cpu", 1)(pixels)
    engine = OnnxEngine(artifact / ONNX_FILE, "cuda", options=OnnxOptions(fp16=fp16))
    out = engine(pixels.cuda())
    assert out.device.type == "cuda"
    cosine = torch.nn.functional.cosine_similarity(out.cpu(), reference)
    assert cosine.min() > (0.999 if fp16 else 0.99999)


def test_warm_up_covers_the_batch_sizes_in_use_on_cuda() -> None:
    assert warm_batch_sizes("cpu", 32) == [1]
    assert warm_batch_sizes("cuda", 32) == [1, 2, 4, 8, 16, 32]
    assert warm_batch_sizes("cuda:1", 12) == [1, 2, 4, 8, 12]


def _spinning(engine: OnnxEngine) -> str:
    options = engine.session.get_session_options()
    try:
        return options.get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # no entry: ONNX Runtime's default
        return "unset"


def test_cpu_threads_do_not_spin_between_runs_unless_asked(artifact: Path) -> None:
    # a spinning pool burns a core after every small batch (docs/performance.md)
    assert _spinning(OnnxEngine(artifact / ONNX_FILE, "cpu", 2)) == "0"
    spinning = OnnxEngine(artifact / ONNX_FILE, "cpu", 2, OnnxOptions(spinning=True))
    assert _spinning(spinning) == "unset"  # ONNX Runtime's own default: spin


def test_the_spinning_setting_reaches_the_engine_options(tmp_path: Path) -> None:
    from promptserve.service.settings import Settings

    assert Settings(store=tmp_path).onnx_options().spinning is False
    assert Settings(store=tmp_path, onnx_spinning=True).onnx_options().spinning is True
