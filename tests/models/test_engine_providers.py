"""The providers a session really gets, checked on this host: a CUDA or TensorRT provider that
cannot load is an error, never a quiet CPU session; TensorRT caches are per graph; fp16 keeps
ONNX Runtime's block list and passes its gate; traced graphs hold no device constants."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import pytest
import torch

from promptserve.models import providers
from promptserve.models.artifact import publish_classifier
from promptserve.models.engines import ONNX_FILE, OnnxEngine, OnnxOptions, input_side
from promptserve.models.errors import Fp16AccuracyError, ProviderError
from promptserve.models.export import device_constants
from promptserve.models.fp16 import check_fp16, float16_graph, fp16_block_list
from promptserve.models.input_engines import repeat_inputs
from promptserve.models.methods import create_method, list_methods
from promptserve.models.providers import (
    CPU,
    CUDA,
    TENSORRT,
    batch_profiles,
    cuda_options,
    onnx_providers,
    open_session,
    tensorrt_cache_key,
)
from tests.helpers import create_learner

NO_CUDA = providers.cuda_problem(0) is not None
needs_no_cuda = pytest.mark.skipif(not NO_CUDA, reason="this host has a working CUDA provider")


def _artifact(backbone: Any, store: Path, seed: int, method: str = "zeroshot") -> Path:
    """A classifier whose weights, the backbone's included, differ by `seed`; on a copy of the
    backbone, which the session shares with every other test."""
    torch.manual_seed(seed)
    learner = create_method(method, copy.deepcopy(backbone))
    with torch.no_grad():
        for parameter in learner.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    publish_classifier(learner, ["a", "b"], store, method, training={"data": "t"}, format_version=1)
    return store / method / "1"


@pytest.fixture(scope="module")
def artifact(tiny_backbone: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _artifact(tiny_backbone, tmp_path_factory.mktemp("store"), 0)


@needs_no_cuda
def test_cuda_without_a_loadable_provider_is_an_error_naming_the_library(artifact: Path) -> None:
    with pytest.raises(ProviderError, match=r"libcu\w*\.so"):
        OnnxEngine(artifact / ONNX_FILE, "cuda")


@needs_no_cuda
def test_fp16_without_the_cuda_provider_is_refused_before_the_graph_opens(
    artifact: Path,
) -> None:
    # opened in a CPU-only session this graph segfaults in ORT's NchwcTransformer
    with pytest.raises(ProviderError, match="CUDA provider"):
        OnnxEngine(artifact / ONNX_FILE, "cuda", options=OnnxOptions(fp16=True))


@needs_no_cuda
def test_a_session_that_fell_back_to_the_cpu_is_refused(artifact: Path) -> None:
    asked = [(CUDA, {"device_id": 0}), CPU]
    assert CUDA in ort.get_available_providers()  # the wheel lists it all the same
    with pytest.raises(ProviderError, match="did not load CUDAExecutionProvider"):
        open_session(str(artifact / ONNX_FILE), ort.SessionOptions(), asked)


def test_tensorrt_is_an_error_unless_libnvinfer_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers, "cuda_problem", lambda device_id=0: None)
    monkeypatch.setattr(providers, "library_problem", lambda name: f"{name}: not found")
    providers.tensorrt_problem.cache_clear()
    try:
        with pytest.raises(ProviderError, match=r"libnvinfer\.so\.10"):
            onnx_providers(torch.device("cuda"), OnnxOptions(tensorrt=True))
    finally:
        providers.tensorrt_problem.cache_clear()


def test_cuda_options_bound_memory_and_keep_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers, "cuda_problem", lambda device_id=0: None)
    options = OnnxOptions(gpu_mem_limit=1 << 30)
    (name, cuda), cpu = onnx_providers(torch.device("cuda:1"), options)
    assert (name, cpu) == (CUDA, CPU)
    assert cuda == {
        "device_id": 1,
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "HEURISTIC",
        "use_tf32": 0,
        "gpu_mem_limit": 1 << 30,
    }
    assert "gpu_mem_limit" not in cuda_options(torch.device("cuda"), OnnxOptions())


def test_tensorrt_options_give_each_graph_its_own_cache(
    tiny_backbone: Any, artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(providers, "cuda_problem", lambda device_id=0: None)
    monkeypatch.setattr(providers, "tensorrt_problem", lambda: None)
    other = _artifact(tiny_backbone, tmp_path / "other", 1)  # same structure, other weights
    cache = tmp_path / "trt"
    options = OnnxOptions(tensorrt=True, fp16=True, trt_cache_dir=cache, max_batch_size=16)
    found = onnx_providers(torch.device("cuda:1"), options, artifact / ONNX_FILE)
    assert [providers.provider_name(p) for p in found] == [TENSORRT, CUDA, CPU]
    trt = dict(found[0][1])  # type: ignore[index]
    assert trt["device_id"] == 1
    assert trt["trt_fp16_enable"] is True
    side = input_side(artifact / ONNX_FILE)
    assert trt["trt_profile_max_shapes"] == f"pixels:16x3x{side}x{side}"
    folder = Path(trt["trt_engine_cache_path"])
    assert folder.parent == cache
    assert folder.is_dir()
    assert folder.name.endswith("-fp16-b1-16")
    keys = {
        tensorrt_cache_key(artifact / ONNX_FILE, options),
        tensorrt_cache_key(other / ONNX_FILE, options),
        tensorrt_cache_key(artifact / ONNX_FILE, OnnxOptions(max_batch_size=16)),
        tensorrt_cache_key(artifact / ONNX_FILE, OnnxOptions(fp16=True, max_batch_size=8)),
    }
    assert len(keys) == 4


def test_profiles_cover_the_shared_graphs_extra_inputs(tiny_backbone: Any, tmp_path: Path) -> None:
    publish_classifier(create_method("provp", tiny_backbone), ["a", "b"], tmp_path, "p")
    shared = [
        path
        for path in tmp_path.glob(".backbones/*/graphs/*/" + ONNX_FILE)
        if len(onnx.load(str(path), load_external_data=False).graph.input) > 1
    ]
    assert shared, "provp publishes a shared prompt graph"
    graph = onnx.load(str(shared[0]), load_external_data=False).graph
    profiles = batch_profiles(shared[0], 8)
    assert profiles is not None
    low, high = profiles
    assert [s.split(":")[0] for s in high.split(",")] == [i.name for i in graph.input]
    assert all(s.split(":")[1].split("x")[0] == "8" for s in high.split(","))
    assert all(s.split(":")[1].split("x")[0] == "1" for s in low.split(","))


def test_the_fp16_block_list_extends_onnx_runtimes() -> None:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    blocked = fp16_block_list()
    assert set(DEFAULT_OP_BLOCK_LIST) <= set(blocked)
    assert {"TopK", "CumSum", "Pow", "ReduceMean", "Greater", "Equal"} <= set(blocked)


def _cpu_fp16_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # unoptimised: ORT 1.31's CPU optimiser crashes on float16 graphs (the engine never
    # opens one on the CPU); the gate's arithmetic is what is checked here
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(float16_graph(path), options, [CPU])


def test_the_fp16_gate_passes_a_good_graph_and_refuses_another(
    tiny_backbone: Any, artifact: Path, tmp_path: Path
) -> None:
    full = ort.InferenceSession(str(artifact / ONNX_FILE), providers=[CPU])
    assert check_fp16(full, _cpu_fp16_session(artifact / ONNX_FILE)) > 0.999
    other = _artifact(tiny_backbone, tmp_path, 7)
    with pytest.raises(Fp16AccuracyError, match="disagrees with float32"):
        check_fp16(full, _cpu_fp16_session(other / ONNX_FILE))


@pytest.mark.parametrize("method", list_methods())
def test_traced_graphs_hold_no_device_constants(tiny_backbone: Any, method: str) -> None:
    learner = create_learner(method, tiny_backbone).eval()
    size = tiny_backbone.preprocess.size
    pixels = torch.randn(2, 3, size, size)
    shared = learner.shared_visual()
    graph = learner.visual_graph().eval() if shared is None else shared.graph.eval()
    extra = () if shared is None else tuple(repeat_inputs(shared.inputs, 2).values())
    with torch.no_grad():
        traced = torch.jit.freeze(torch.jit.trace(graph, (pixels, *extra), check_trace=False))
    assert device_constants(traced.graph) == []


class _FallbackSession:
    """What ONNX Runtime's own fallback leaves: CUDA present, but on device 0."""

    def get_providers(self) -> list[str]:
        return [CUDA, CPU]

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        return {CUDA: {"device_id": "0"}, CPU: {}}


def test_a_session_that_lost_its_device_id_is_refused() -> None:
    from promptserve.models.providers import check_providers

    asked = [(CUDA, {"device_id": 1}), CPU]
    with pytest.raises(ProviderError, match="runs on another device than 1"):
        check_providers(_FallbackSession(), asked)  # type: ignore[arg-type]
    check_providers(_FallbackSession(), [(CUDA, {"device_id": 0}), CPU])  # type: ignore[arg-type]
