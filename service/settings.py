"""Service settings, read from ``PROMPTSERVE_*`` environment variables (or a ``.env`` file)."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from promptserve.models.artifact import check_name
from promptserve.models.engines import OnnxOptions
from promptserve.models.errors import ArtifactError
from promptserve.models.precision_gate import GateThresholds

MiB = 1024 * 1024
ENGINES_KEPT = 2  # engines the pool keeps open beyond the loaded classifiers' (EnginePool.keep)


class Settings(BaseSettings):
    """Everything the service can be told; each field is ``PROMPTSERVE_<FIELD>``.

    Every field has a description: docs/reference/settings.md is generated from them
    (docs/gen_reference.py).
    """

    model_config = SettingsConfigDict(
        env_prefix="PROMPTSERVE_", env_file=".env", extra="ignore", frozen=True
    )

    store: Path = Field(
        default=Path("store"),
        description="The classifier store directory; with an s3:// store, its local copy",
    )
    store_url: str | None = Field(
        default=None,
        description="The object store holding the classifiers (s3://bucket/prefix); set it "
        "by giving PROMPTSERVE_STORE an s3:// URL. None: the store is the local directory",
    )
    store_cache: Path | None = Field(
        default=None, description="The local copy of an s3:// store; None: ./store"
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="An S3-compatible service to use instead of AWS (MinIO)"
    )
    s3_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Seconds an object-store request waits to connect and "
        "for each read before it is tried again or fails (503 store_unavailable)",
    )
    s3_attempts: int = Field(default=2, ge=1, description="Tries of one object-store request")
    store_poll_s: float = Field(
        default=2.0, gt=0, description="Seconds between refreshes of an s3:// store's local copy"
    )
    default_classifier: str = Field(
        default="default", description="The classifier served when a request names none"
    )
    default_backbone: str = Field(
        default="mini",
        description="Backbone of the default classifier created on first start (mini, ARCH, "
        "ARCH:TAG such as ViT-B-16:openai, ARCH@FILE)",
    )
    create_default: bool = Field(
        default=True, description="Create the default classifier when the store lacks it"
    )
    engine: Literal["onnx", "torchscript"] = Field(
        default="onnx", description="Which exported graph the service runs"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where the engines run; auto: CUDA when it really works"
    )
    onnx_threads: int | None = Field(
        default=None, ge=1, description="ONNX Runtime intra-op threads; None: min(4, CPU count)"
    )
    onnx_spinning: bool = Field(
        default=False,
        description="ONNX Runtime's CPU threads spin-wait for work between operators and "
        "runs: a little lower latency on a dedicated host, a core burnt between batches",
    )
    # --- reduced precision on the CPU (models.precision), each engine gated against float32 ---
    engine_precision: Literal["fp32", "bf16", "int8"] = Field(
        default="fp32",
        description="Visual engine precision on the CPU: fp32, int8 (ONNX Runtime quantization) "
        "or bf16 (TorchScript under bf16 autocast; needs avx512_bf16 or amx_bf16); a reduced "
        "one serves a classifier only after its accuracy gate, else float32 does",
    )
    precision_min_agreement: float = Field(
        default=0.99,
        ge=0,
        le=1,
        description="The gate: share of calibration images whose top-1 class matches float32's",
    )
    precision_min_cosine: float = Field(
        default=0.99,
        ge=-1,
        le=1,
        description="The gate: smallest embedding cosine to float32 on the calibration images",
    )
    precision_gate_images: int = Field(
        default=32, ge=1, le=1024, description="The gate: images in the fixed calibration set"
    )
    # --- the GPU path (each is ignored on the CPU but onnx_fp16, which needs CUDA) ---
    onnx_fp16: bool = Field(
        default=False,
        description="Run the visual graph in float16 on CUDA (LayerNorm, Softmax stay float32)",
    )
    onnx_io_binding: bool = Field(
        default=True, description="The engine reads and writes torch tensors in place"
    )
    onnx_tensorrt: bool = Field(
        default=False, description="Put the TensorRT provider first (needs libnvinfer.so.10)"
    )
    trt_cache_dir: Path | None = Field(
        default=None, description="TensorRT engine and timing caches; None: <store>/.trt-cache"
    )
    # split evenly over the engines that can be open at once (max_loaded_classifiers +
    # ENGINES_KEPT): see gpu_mem_limit
    gpu_mem_budget_mib: int | None = Field(
        default=None,
        ge=64,
        description="CUDA memory (MiB) all ONNX Runtime sessions may hold, split evenly over "
        "max_loaded_classifiers + 2 sessions; None: each arena unbounded",
    )
    onnx_tf32: bool = Field(
        default=False,
        description="TF32 matmuls on CUDA: faster, about 1e-3 off the float32 reference",
    )
    device_decode: bool = Field(
        default=False,
        description="On CUDA, decode a request's JPEGs with nvJPEG (off until bench/gpu_check.py "
        "passes on the host)",
    )
    decode_threads: int = Field(
        default_factory=lambda: min(4, os.cpu_count() or 1),
        ge=1,
        description="Threads decoding and preprocessing images; default min(4, CPU count)",
    )
    inline_decode_bytes: int = Field(
        default=32 * 1024,
        ge=0,
        description="A request of one image up to this size (bytes, or base64 characters) is "
        "decoded on the event loop instead of the decode pool (0: always the pool)",
    )
    inline_decode_pixels: int = Field(
        default=1_000_000, ge=0, description="...if its header declares at most this many pixels"
    )
    max_batch_size: int = Field(default=32, ge=1, description="Images per engine call")
    max_wait_ms: float = Field(
        default=0.0,
        ge=0,
        le=10_000,
        description="How long a batch waits to fill (ms); 0: a batch is what queued while "
        "the engine was busy",
    )
    queue_size: int = Field(
        default=512, ge=1, description="Images waiting for the engine; beyond, a 429 queue_full"
    )
    max_loaded_classifiers: int = Field(
        default=8, ge=1, description="Loaded classifier versions kept (least recently used out)"
    )
    max_images_per_request: int = Field(
        default=16, ge=1, description="Images in one request; beyond, a 413 too_many_images"
    )
    max_image_pixels: int = Field(
        default=25_000_000,
        ge=1,
        description="Declared width x height of one image; beyond, a 413 image_too_large",
    )
    max_body_bytes: int = Field(
        default=20 * MiB, ge=1, description="Request body bytes; beyond, a 413 body_too_large"
    )
    # admission control: beyond either limit a request is answered 429 with Retry-After before
    # its body is read
    max_inflight_requests: int = Field(
        default_factory=lambda: 32 * (os.cpu_count() or 1),
        ge=1,
        description="Requests in flight at once (health and metrics exempt); default 32 per CPU",
    )
    max_inflight_bytes: int = Field(
        default=64 * MiB, ge=1, description="Body bytes of the requests in flight, as they arrive"
    )
    retry_after_s: int = Field(default=1, ge=1, description="The Retry-After header of a 429")
    # slow and idle clients (service.api.uploads, service.connections): see docs/guides/limits.md
    body_min_rate: int = Field(
        default=1024,
        ge=0,
        description="Body bytes/s a request must send in every "
        "BODY_RATE_WINDOW_S window; slower, a 408 body_timeout (0: any rate)",
    )
    body_rate_window_s: float = Field(default=10.0, gt=0, description="See BODY_MIN_RATE")
    body_timeout_s: float = Field(
        default=300.0, gt=0, description="Seconds a request body may take; beyond, a 408"
    )
    max_header_bytes: int = Field(
        default=64 * 1024, ge=1024, description="Bytes of a request line and headers; beyond, 431"
    )
    max_headers: int = Field(default=100, ge=1, description="Headers of a request; beyond, 431")
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds from a connection (or request) start to the end "
        "of its headers; beyond, the connection is closed",
    )
    max_connections: int = Field(
        default=4096,
        ge=1,
        description="Open connections per API process; beyond, the oldest "
        "idle one is closed for the new one (none idle: a 503)",
    )
    shutdown_timeout_s: float = Field(
        default=25.0, ge=0, description="Seconds a SIGTERM waits for requests in flight"
    )
    max_labels: int = Field(default=1000, ge=1, description="Labels named in one request")
    max_new_labels: int = Field(
        default=100,
        ge=0,
        description="Labels a classifier lacks, encoded per request (0: refused, unknown_label)",
    )
    max_label_tokens: int = Field(default=32, ge=1, description="Tokens in one label name")
    max_label_chars: int = Field(
        default=300, ge=1, description="Characters in one label, checked before tokenizing"
    )
    max_cached_labels: int = Field(
        default=10_000, ge=1, description="Encoded labels kept (least recently used out)"
    )
    default_top_k: int = Field(
        default=5, ge=1, description="Labels per image when a request gives no top_k"
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="When set, every route but /health/* and the playground page needs "
        "Authorization: Bearer <key>; one admin key named default",
    )
    api_keys_file: Path | None = Field(
        default=None, description="A JSON file of scoped keys, reloaded when it changes"
    )
    # --- tuning jobs (POST /adapt) ---
    jobs_dir: Path | None = Field(
        default=None, description="The job database and uploads; None: <store>/.jobs"
    )
    max_concurrent_jobs: int = Field(
        default=1, ge=0, description="Job processes this process runs at once; 0 queues only"
    )
    job_threads: int = Field(
        default_factory=lambda: max(1, (os.cpu_count() or 2) // 2),
        ge=1,
        description="Torch threads of a job process; default half the CPUs, so classification "
        "keeps the rest",
    )
    job_niceness: int = Field(
        default=10, ge=0, le=19, description="CPU priority drop of a job process"
    )
    job_device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where jobs train; auto: CUDA when available"
    )
    cancel_grace_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a cancelled job process gets to stop by itself before it is killed",
    )
    max_job_images: int = Field(default=1024, ge=2, description="Uploaded images per job")
    max_job_classes: int = Field(default=256, ge=2, description="Classes in one job")
    min_job_images_per_class: int = Field(
        default=1, ge=1, description="Images each class of a job needs (1: one-shot tuning)"
    )
    max_job_epochs: int = Field(
        default=200, ge=1, description="Epochs a job may train (its resolved recipe's)"
    )
    max_queued_jobs: int = Field(
        default=16, ge=0, description="Jobs waiting for a runner; beyond, a 429 too_many_jobs"
    )
    job_retention_days: float = Field(
        default=30.0, gt=0, description="Days ended jobs (and their events) are kept"
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="The shared job queue of a cluster (postgresql://...); None: SQLite under "
        "the jobs directory",
    )
    job_lease_s: float = Field(
        default=30.0,
        ge=2,
        description="A running job's lease: renewed every poll, taken over by another runner "
        "once it runs out",
    )
    job_db_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a job database call waits for a lock or a "
        "connection, then answers 503 jobs_unavailable",
    )
    job_max_attempts: int = Field(
        default=2, ge=1, description="Runs of a job whose runners keep dying, then worker_died"
    )
    allow_adapt_default: bool = Field(
        default=False, description="Let POST /adapt publish versions of the default classifier"
    )
    data_root: Path | None = Field(
        default=None,
        description="Where /adapt `dataset` references resolve; None: they are refused",
    )
    keep_job_uploads: bool = Field(
        default=False, description="Keep a job's uploaded images after it ends"
    )
    # with more than one, one engine process owns the model weights, the batcher and the job
    # runner (service.remote)
    workers: int = Field(
        default=1,
        ge=1,
        le=256,
        description="API worker processes of `promptserve serve` sharing the port",
    )
    engine_socket: Path | None = Field(
        default=None,
        description="Internal: the engine process's socket, set by `promptserve serve` in each "
        "API worker it starts",
    )
    host: str = Field(default="127.0.0.1", description="Interface `promptserve serve` binds")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `promptserve serve` binds")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level of every process"
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="Log lines of every process: text, or one JSON object each"
    )
    access_log: bool = Field(default=False, description="Log one line per HTTP request answered")

    @property
    def job_root(self) -> Path:
        """Where the job database and each job's files live."""
        return self.jobs_dir if self.jobs_dir is not None else self.store / ".jobs"

    def onnx_options(self) -> OnnxOptions:
        """The engine options these settings ask for (see `models.engines.OnnxOptions`)."""
        cache = self.trt_cache_dir if self.trt_cache_dir is not None else self.store / ".trt-cache"
        return OnnxOptions(
            fp16=self.onnx_fp16,
            io_binding=self.onnx_io_binding,
            spinning=self.onnx_spinning,
            tensorrt=self.onnx_tensorrt,
            trt_cache_dir=cache if self.onnx_tensorrt else None,
            max_batch_size=self.max_batch_size,
            gpu_mem_limit=self.gpu_mem_limit,
            tf32=self.onnx_tf32,
        )

    @property
    def gpu_mem_limit(self) -> int | None:
        """Bytes one engine's CUDA arena may hold: the budget over the engines open at once."""
        if self.gpu_mem_budget_mib is None:
            return None
        return self.gpu_mem_budget_mib * MiB // (self.max_loaded_classifiers + ENGINES_KEPT)

    @property
    def job_database(self) -> str | Path:
        """Where the job store lives: the database URL, or the SQLite file under job_root."""
        if self.database_url is not None and self.database_url.get_secret_value():
            return self.database_url.get_secret_value()
        return self.job_root / "jobs.db"

    @model_validator(mode="before")
    @classmethod
    def _store_url(cls, data: Any) -> Any:
        """PROMPTSERVE_STORE may name an object store; the local copy then goes to
        PROMPTSERVE_STORE_CACHE (default ./store)."""
        store = _mended_url(str(data.get("store", ""))) if isinstance(data, dict) else ""
        if isinstance(data, dict) and is_store_url(store):
            data = dict(data)
            data.pop("store")
            data["store_url"] = store.rstrip("/")
            data["store"] = data.get("store_cache") or Path("store")
        return data

    @field_validator("default_classifier")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        try:
            return check_name(value)
        except ArtifactError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> Settings:
        if self.queue_size < self.max_images_per_request:
            raise ValueError(
                f"queue_size ({self.queue_size}) must be at least max_images_per_request "
                f"({self.max_images_per_request}), or a full-size request could never be queued"
            )
        return self

    @model_validator(mode="after")
    def _fp16_needs_cuda(self) -> Settings:
        if self.onnx_fp16 and self.device == "cpu":
            raise ValueError("onnx_fp16 needs device cuda (or auto on a CUDA host)")
        return self

    @model_validator(mode="after")
    def _precision_runs_here(self) -> Settings:
        if self.engine_precision == "fp32":
            return self
        if self.onnx_fp16 or self.device == "cuda":
            raise ValueError(
                f"engine_precision {self.engine_precision} is for the CPU; on CUDA use onnx_fp16"
            )
        if self.engine_precision == "bf16":
            from promptserve.models.precision import bf16_problem  # reads /proc/cpuinfo

            problem = bf16_problem()
            if problem is not None:
                raise ValueError(f"engine_precision bf16 cannot run here: {problem}")
        return self

    def gate_thresholds(self) -> GateThresholds:
        """The accuracy gate a reduced engine precision must pass (`models.precision_gate`)."""
        return GateThresholds(
            min_agreement=self.precision_min_agreement,
            min_cosine=self.precision_min_cosine,
            images=self.precision_gate_images,
        )

    @field_validator("api_key", "api_keys_file", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        # PROMPTSERVE_API_KEY= (empty, as compose writes an unset host variable) means no auth
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        return None if text == "" else value


def is_store_url(text: str) -> bool:
    """Whether a store setting names an object store (``s3://bucket/prefix``), not a folder."""
    return "://" in text and not text.startswith("file://")


def _mended_url(text: str) -> str:
    """A URL that went through `Path` (``--store s3://b/p`` reads as ``s3:/b/p``), mended."""
    if re.match(r"[a-z][a-z0-9+.-]*:/[^/]", text) and not text.startswith("file:"):
        return text.replace(":/", "://", 1)
    return text


@functools.cache
def get_settings() -> Settings:
    """The settings of this process, read once from the environment."""
    return Settings()


def resolve_device(device: str) -> str:
    """A device setting as a torch device name: "auto" is CUDA when present, else the CPU."""
    if device == "auto":
        import torch  # only here: reading settings needs no torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
