"""The steps of `bench/gpu_check.py`: each takes the `Check` and returns what it measured (a
"failures" list in it marks the step failed), or raises `SkippedStepError` with the reason."""

from __future__ import annotations

import asyncio
import io
import json
import multiprocessing
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gpu_pinned_child import pinned_child
from PIL import Image

from promptserve.models.artifact import export_classifier
from promptserve.models.backbone import Backbone, PreprocessConfig, load_backbone
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
DECODE_MAX_MEAN_ABS = 3.0  # uint8 levels: nvJPEG's IDCT and the GPU resize against PIL's


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
            export_classifier(
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


# --- 5. decode coverage, 6. concurrency -------------------------------------------------------


def decode_cases() -> dict[str, bytes]:
    exif = Image.Exif()
    cases = {
        "420": jpeg_bytes(640, 480, subsampling=2),
        "444": jpeg_bytes(640, 480, subsampling=0),
        "progressive": jpeg_bytes(640, 480, progressive=True),
        "grey": jpeg_bytes(640, 480, mode="L"),
        "tiny": jpeg_bytes(16, 12),
        "cmyk": jpeg_bytes(320, 240, mode="CMYK"),
    }
    for orientation in (6, 8):
        exif[0x0112] = orientation
        cases[f"exif{orientation}"] = jpeg_bytes(640, 480, exif=exif.tobytes())
    return cases


def decode(check: Check) -> dict[str, Any]:
    from promptserve.models.preprocess import FastEvalTransform
    from promptserve.service.classify import device_decode
    from promptserve.service.classify.images import prepare_image

    cfg = PreprocessConfig(size=224, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    transform, limit = FastEvalTransform(cfg), 25_000_000
    result: dict[str, Any] = {"failures": []}
    before = device_decode.decode_fallbacks()
    for kind, data in decode_cases().items():
        cpu = prepare_image(data, transform, limit).float()  # uint8 [3, S, S]
        indices, datas, orientations = device_decode.split_jpegs([data], cfg, limit)
        if not indices:
            result[kind] = "CPU path (not sent to the device decoder)"
            continue
        decoded = device_decode.decode_jpegs(datas, orientations, cfg, check.device)
        if decoded is None:
            result[kind] = "refused by the device decoder: CPU fallback"
            continue
        mean_abs = float((decoded[0].float().cpu() - cpu).abs().mean())
        result[kind] = {"mean_abs": round(mean_abs, 3)}
        if mean_abs > DECODE_MAX_MEAN_ABS:
            result["failures"].append(kind)
    result["fallbacks_counted"] = device_decode.decode_fallbacks() - before
    return result


def concurrency(check: Check) -> dict[str, Any]:
    import httpx

    from promptserve.service.app import create_app
    from promptserve.service.settings import Settings

    version = check.version("coop")
    settings = Settings(
        store=check.store,
        default_classifier=version.parent.name,
        create_default=False,
        device="cuda" if check.cuda else "cpu",
        engine="onnx",
        api_key=None,
        max_batch_size=32,
        max_wait_ms=10.0,
        decode_threads=4,
        device_decode=check.cuda,
    )
    images = [jpeg_bytes(320, 240, seed) for seed in range(64)]

    async def run() -> dict[str, Any]:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            state = await app.state.runtime.wait_ready(timeout=300)
            if state != "ready":
                raise RuntimeError(f"the service did not become ready: {app.state.runtime.failure}")
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:

                async def post(image: bytes) -> Any:
                    files = [("images", ("i.jpg", image, "image/jpeg"))]
                    response = await client.post("/classify", files=files, data={"top_k": "3"})
                    response.raise_for_status()
                    return response.json()["predictions"][0]

                serial = [await post(image) for image in images]
                started = time.perf_counter()
                together = await asyncio.gather(*(post(image) for image in images))
                seconds = time.perf_counter() - started
                metrics = (await client.get("/metrics")).text
        differ = [
            i
            for i, (a, b) in enumerate(zip(serial, together, strict=True))
            if [p["label"] for p in a] != [p["label"] for p in b]
            or max(abs(p["score"] - q["score"]) for p, q in zip(a, b, strict=True)) > 1e-4
        ]
        batches = [
            line for line in metrics.splitlines() if line.startswith("promptserve_batch_size_")
        ]
        return {
            "requests": 64,
            "concurrent_seconds": round(seconds, 3),
            "differ": differ,
            "batch_metrics": batches[-2:],
            "failures": [f"request {i}" for i in differ],
        }

    return asyncio.run(run())


# --- 7. memory, 8. TensorRT cache -------------------------------------------------------------


def memory(check: Check) -> dict[str, Any]:
    count, batches = (2, [1, 2]) if check.smoke else (10, [1, 2, 4, 8, 16, 32])
    size = check.model().preprocess.size
    rows, loaded = [], []
    for seed in range(count):
        loaded.append(load_classifier(check.version("zeroshot", 1, seed), device=check.device))
        rows.append({"loaded": len(loaded), **device_memory(check)})
    first_call = {}
    for batch in batches:
        pixels = torch.randn(batch, 3, size, size, device=check.device)
        timings = []
        for _ in range(2):  # the first call of a shape, then a warm one
            sync(check)
            started = time.perf_counter()
            loaded[0].embed(pixels)
            sync(check)
            timings.append(round((time.perf_counter() - started) * 1000, 2))
        first_call[batch] = {"first_ms": timings[0], "warm_ms": timings[1], **device_memory(check)}
    return {"per_load": rows, "per_batch": first_call}


def device_memory(check: Check) -> dict[str, Any]:
    if not check.cuda:
        return {}
    free, total = torch.cuda.mem_get_info()
    return {
        "used_mib": (total - free) >> 20,
        "torch_reserved_mib": torch.cuda.memory_reserved() >> 20,
    }


def tensorrt(check: Check) -> dict[str, Any]:
    check.needs_cuda("TensorRT")
    problem = tensorrt_problem()
    if problem is not None:
        raise SkippedStepError(f"TensorRT does not load: {problem}")
    options = OnnxOptions(tensorrt=True, trt_cache_dir=check.scratch / "trt", max_batch_size=4)
    size = check.model().preprocess.size
    pixels = torch.randn(4, 3, size, size, device=check.device)
    outs = [
        OnnxEngine(check.version("zeroshot", 1, seed) / ONNX_FILE, check.device, options=options)(
            pixels
        )
        for seed in (0, 1)
    ]
    same = bool(torch.equal(outs[0], outs[1]))
    caches = sorted(p.name for p in (check.scratch / "trt").iterdir())
    return {
        "identical_embeddings": same,
        "cache_folders": caches,
        "failures": ["collision"] if same else [],
    }


# --- 9. training and a pinned job, 10. bench --------------------------------------------------


def training(check: Check) -> dict[str, Any]:
    check.needs_cuda("bf16 training")
    from promptserve.training.api import fit_learner
    from promptserve.training.request import TrainRequest

    request = TrainRequest(
        method="coop",
        data="synthetic:color-shape-base?n=5&seed=1&size=32",
        store=check.store,
        name="trained",
        backbone="tiny",
        shots=2,
        overrides={"epochs": 2, "batch_size": 4},
        device=check.device,
    )
    fitted = fit_learner(request)
    result = {
        "precision": "bf16 autocast (auto on CUDA)",
        "losses": [round(x, 4) for x in fitted.result.losses],
        "seconds": round(fitted.result.seconds, 2),
    }
    result["failures"] = [] if all(np.isfinite(fitted.result.losses)) else ["loss not finite"]
    return result


def pinned_job(check: Check) -> dict[str, Any]:
    gpus = torch.cuda.device_count() if check.cuda else 2
    target = f"cuda:{gpus - 1}"  # the last GPU: on a multi-GPU host not GPU 0
    context = multiprocessing.get_context("spawn")
    queue, go = context.Queue(), context.Event()
    process = context.Process(target=pinned_child, args=(queue, go, target, check.cuda))
    process.start()
    try:
        seen = queue.get(timeout=120)
        apps = (
            command_output(
                ["nvidia-smi", "--query-compute-apps=pid,gpu_bus_id", "--format=csv,noheader"]
            )
            if check.cuda
            else "no GPU"
        )
    finally:
        go.set()
        process.join(30)
    failures = [] if seen["visible"] == str(gpus - 1) else ["not pinned"]
    return {"asked": target, "seen": seen, "compute_apps": apps, "failures": failures}


def bench(check: Check) -> dict[str, Any]:
    check.needs_cuda("bench/gpu.py")
    out = check.out_dir / "gpu.json"
    command = [sys.executable, str(REPO / "bench" / "gpu.py"), "--backbone", check.backbone]
    command += ["--seconds", "2", "--batch", "1", "32", "--clients", "1", "16"]
    command += ["--variants", "copy", "bound", "fp16", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    if done.returncode != 0:
        return {"failures": ["bench/gpu.py"], "stderr": done.stderr[-1500:]}
    rows = json.loads(out.read_text())["rows"]
    return {"rows": rows, "failures": []}


STEPS: dict[str, Callable[[Check], dict[str, Any]]] = {
    "environment": environment,
    "providers": providers,
    "parity": parity,
    "stream_order": stream_order,
    "nvjpeg_race": nvjpeg_race,
    "decode": decode,
    "concurrency": concurrency,
    "memory": memory,
    "tensorrt": tensorrt,
    "training": training,
    "pinned_job": pinned_job,
    "bench": bench,
}
