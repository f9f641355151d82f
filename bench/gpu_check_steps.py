"""Steps 0-4 of `bench/gpu_check.py` (environment, providers, parity, stream order, the nvJPEG
race) and what every step shares. Each step takes the `Check` and returns what it measured (a
"failures" list in it marks the step failed), or raises `SkippedStepError` with the reason;
steps 5-10 are in `gpu_check_serving`."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from promptserve.models.artifact import publish_classifier
from promptserve.models.backbone import Backbone, load_backbone
from promptserve.models.classifier import load_classifier
from promptserve.models.devices import choose_device
from promptserve.models.engines import ONNX_FILE, OnnxEngine, OnnxOptions
from promptserve.models.export import eager_visual_graph, parity_pixels
from promptserve.models.methods import create_method
from promptserve.models.providers import cuda_problem, tensorrt_problem

REPO = Path(__file__).resolve().parents[1]
METHODS = ("zeroshot", "coop", "sep", "provp")  # provp: a shared prompt graph (format 2)
FP32_MAX_ABS = 1e-3  # TF32 off: CUDA float32 stays within kernel differences of the CPU's
FP16_MIN_COSINE = 0.999


class SkippedStepError(Exception):
    """A step that cannot run here (not a failure); its message is the reason."""


@dataclass
class Check:
    """What the steps share: the device, the backbone and a scratch store of exports."""

    device: str
    backbone: str
    smoke: bool
    scratch: Path
    out_dir: Path
    _backbone: Backbone | None = None
    _versions: dict[tuple[str, int, int], Path] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def store(self) -> Path:
        return self.scratch / "store"

    def needs_cuda(self, what: str) -> None:
        if not self.cuda:
            raise SkippedStepError(f"{what} needs CUDA (device {self.device})")

    def model(self) -> Backbone:
        if self._backbone is None:
            self._backbone = load_backbone(self.backbone)
        return self._backbone

    def version(self, method: str, format_version: int = 2, seed: int = 0) -> Path:
        """A published version of `method` on the backbone, its prompts moved off their
        initial values (seeded), exported once per (method, format, seed)."""
        key = (method, format_version, seed)
        if key not in self._versions:
            learner = perturbed(method, self.model(), seed)
            name = f"{method}-f{format_version}-s{seed}"
            publish_classifier(
                learner,
                CLASSES,
                self.store,
                name,
                training={"data": "check"},
                format_version=format_version,
            )
            self._versions[key] = sorted((self.store / name).iterdir())[-1]
        return self._versions[key]


CLASSES = ["a red square", "a blue circle", "a green triangle"]


def perturbed(method: str, backbone: Backbone, seed: int) -> Any:
    torch.manual_seed(seed)
    learner = create_method(method, backbone)
    with torch.no_grad():
        for parameter in learner.parameters():
            if parameter.requires_grad:
                parameter.add_(0.02 * torch.randn_like(parameter))
    return learner.eval()


def sync(check: Check) -> None:
    if check.cuda:
        torch.cuda.synchronize()


# --- 0. environment, 1. providers -------------------------------------------------------------

# one session in a fresh interpreter, so that "bare" really has no torch loaded
PROBE = """
import json, sys
if sys.argv[1] == "torch":
    import torch
import onnxruntime as ort
if sys.argv[1] == "preload":
    ort.preload_dlls()
from onnx import TensorProto, helper
value = helper.make_tensor_value_info
graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
    [value("x", TensorProto.FLOAT, [1])], [value("y", TensorProto.FLOAT, [1])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 9
options = ort.SessionOptions()
options.log_severity_level = 4
providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
session = ort.InferenceSession(model.SerializeToString(), options, providers=providers)
print(json.dumps({"providers": session.get_providers(), "torch": "torch" in sys.modules}))
"""


def environment(check: Check) -> dict[str, Any]:
    import onnxruntime as ort
    from onnxruntime.capi import build_and_package_info

    probes = {}
    for mode in ("bare", "torch", "preload"):
        done = subprocess.run(
            [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120
        )
        probes[mode] = json.loads(done.stdout) if done.returncode == 0 else done.stderr[-300:]
    return {
        "driver": command_output(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv"]
        ),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_sees_cuda": torch.cuda.is_available(),
        "onnxruntime": ort.__version__,
        "onnxruntime_cuda": getattr(build_and_package_info, "cuda_version", None),
        "available_providers": ort.get_available_providers(),
        "session_providers": probes,  # what a session really got, per import order
        "cuda_problem": cuda_problem(0),
        "tensorrt_problem": tensorrt_problem(),
        "auto_chooses": asdict(choose_device("auto")),
    }


def command_output(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable: {exc}"
    return (done.stdout or done.stderr).strip()


VARIANTS = {
    "copy": OnnxOptions(io_binding=False),
    "bound": OnnxOptions(),
    "fp16": OnnxOptions(fp16=True),
    "tensorrt": OnnxOptions(tensorrt=True),
}


def providers(check: Check) -> dict[str, Any]:
    path = check.version("zeroshot", format_version=1) / ONNX_FILE
    result: dict[str, Any] = {"failures": []}
    for variant, options in VARIANTS.items():
        if not check.cuda and (options.fp16 or options.tensorrt):
            result[variant] = "skipped: needs CUDA"
            continue
        try:
            engine = OnnxEngine(path, check.device, options=options)
        except Exception as exc:
            result[variant] = f"{type(exc).__name__}: {exc}"
            if variant != "tensorrt" or tensorrt_problem() is None:
                result["failures"].append(variant)
            continue
        result[variant] = engine.providers
        wanted = "TensorrtExecutionProvider" if options.tensorrt else "CUDAExecutionProvider"
        if check.cuda and engine.providers[0] != wanted:
            result["failures"].append(f"{variant} got {engine.providers}")
    return result


# --- 2. parity --------------------------------------------------------------------------------


def compare(reference: torch.Tensor, got: torch.Tensor, classes: torch.Tensor) -> dict[str, Any]:
    got = got.detach().float().cpu()
    cosine = torch.nn.functional.cosine_similarity(reference, got)
    top = (reference @ classes.T).argmax(1) == (got @ classes.T).argmax(1)
    return {
        "max_abs": float((reference - got).abs().max()),
        "min_cosine": float(cosine.min()),
        "top1_agree": float(top.float().mean()),
    }


def engine_name(engine: Any) -> str:
    """The engine's class, and the shared graph's engine behind a classifier's view of it."""
    inner = getattr(engine, "engine", None)
    return type(engine).__name__ + (f"/{type(inner).__name__}" if inner is not None else "")


def parity(check: Check) -> dict[str, Any]:
    result: dict[str, Any] = {"failures": []}
    variants: dict[str, tuple[str, OnnxOptions | None]] = {
        "onnx-copy": ("onnx", VARIANTS["copy"]),
        "onnx-bound": ("onnx", VARIANTS["bound"]),
        "torchscript": ("torchscript", None),
    }
    if check.cuda:
        variants["onnx-fp16"] = ("onnx", VARIANTS["fp16"])
    # the smoke run keeps one plain and one shared graph; tests/ cover every method on the CPU
    for method in ("zeroshot", "provp") if check.smoke else METHODS:
        version = check.version(method, format_version=1 if method == "zeroshot" else 2)
        learner = perturbed(method, check.model(), 0)
        size = check.model().preprocess.size
        pixels = parity_pixels(8, size)
        with torch.no_grad(), eager_visual_graph(learner) as graph:
            reference = graph(pixels)
        rows: dict[str, Any] = {}
        for variant, (engine, options) in variants.items():
            try:
                classifier = load_classifier(
                    version,
                    engine=engine,
                    device=check.device,
                    options=options,  # type: ignore[arg-type]
                )
                row = compare(
                    reference,
                    classifier.embed(pixels.to(check.device)),
                    classifier.class_embeddings.cpu(),
                )
                row["engine"] = engine_name(classifier.engine)
            except Exception as exc:
                rows[variant] = {"error": f"{type(exc).__name__}: {exc}"}
                result["failures"].append(f"{method} {variant}")
                continue
            fp16 = variant == "onnx-fp16"
            ok = row["min_cosine"] >= FP16_MIN_COSINE if fp16 else row["max_abs"] <= FP32_MAX_ABS
            if not ok or row["top1_agree"] < 1.0:
                result["failures"].append(f"{method} {variant}")
            rows[variant] = row
        result[method] = rows
    return result


# --- 3. stream order, 4. the nvJPEG race ------------------------------------------------------


def stream_order(check: Check) -> dict[str, Any]:
    check.needs_cuda("stream order")
    engine = OnnxEngine(check.version("zeroshot", format_version=1) / ONNX_FILE, check.device)
    size = check.model().preprocess.size
    ref = torch.randn(16, 3, size, size, device=check.device)
    expected = engine(ref).clone()
    x = torch.zeros_like(ref)
    torch.cuda._sleep(int(5e8))  # ~0.5 s of GPU time queued before the copy
    x.copy_(ref)
    ordered = float((engine(x) - expected).abs().max())
    return {"max_abs_after_delayed_copy": ordered, "failures": [] if ordered < 1e-5 else ["order"]}


def jpeg_bytes(width: int, height: int, seed: int = 0, **save: Any) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((width, height), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    mode = save.pop("mode", "RGB")
    image.convert(mode).save(buffer, format="JPEG", quality=90, **save)
    return buffer.getvalue()


def nvjpeg_race(check: Check) -> dict[str, Any]:
    check.needs_cuda("the nvJPEG race")
    from torchvision.io import ImageReadMode, decode_jpeg

    from promptserve.service.classify.device_decode import decode_on_device

    data = jpeg_bytes(1024, 768)
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    expected = decode_jpeg(encoded, mode=ImageReadMode.RGB)
    decoders: dict[str, Callable[[], list[torch.Tensor]]] = {
        "bare": lambda: decode_jpeg([encoded], mode=ImageReadMode.RGB, device=check.device),
        "fixed": lambda: decode_on_device([encoded], check.device),
    }
    result: dict[str, Any] = {"rounds": 200}
    for way, decode in decoders.items():
        corrupted = wrong_pixels = 0
        for _ in range(200):
            victim = torch.full(tuple(expected.shape), 7, dtype=torch.uint8, device=check.device)
            torch.cuda._sleep(int(2e7))
            total = victim.sum(dtype=torch.int64)  # queued behind the sleep
            del victim  # its block is free for the allocator now, still read by `total`
            (pixels,) = decode()
            torch.cuda.synchronize()
            corrupted += int(total.item() != 7 * expected.numel())
            wrong_pixels += int((pixels.cpu().int() - expected.int()).abs().max() > 40)
        result[way] = {"corrupted_reads": corrupted, "wrong_decodes": wrong_pixels}
    fixed = result["fixed"]
    result["failures"] = ["fixed path raced"] if any(fixed.values()) else []
    return result


FIRST_STEPS: dict[str, Callable[[Check], dict[str, Any]]] = {
    "environment": environment,
    "providers": providers,
    "parity": parity,
    "stream_order": stream_order,
    "nvjpeg_race": nvjpeg_race,
}
