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

MiB = 1024 * 1024
ENGINES_KEPT = 2  # engines the pool keeps open beyond the loaded classifiers' (EnginePool.keep)


class Settings(BaseSettings):
    """Everything the service can be told; each field is ``PROMPTSERVE_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix="PROMPTSERVE_", env_file=".env", extra="ignore", frozen=True
    )

    store: Path = Path("store")  # the classifier store directory (its local copy, with store_url)
    # PROMPTSERVE_STORE=s3://bucket/prefix: the classifiers live there, `store` (default
    # ./store, or PROMPTSERVE_STORE_CACHE) mirrors them locally
    store_url: str | None = None
    store_cache: Path | None = None  # the local copy of store_url; None: ./store
    s3_endpoint_url: str | None = None  # an S3-compatible service (MinIO); None: AWS
    store_poll_s: float = Field(default=2.0, gt=0)  # how often the local copy is refreshed
    default_classifier: str = "default"  # served when a request names no classifier
    default_backbone: str = "mini"  # backbone of the default classifier created on first start
    create_default: bool = True  # create the default classifier when the store lacks it
    engine: Literal["onnx", "torchscript"] = "onnx"
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    onnx_threads: int | None = Field(default=None, ge=1)  # None: min(4, CPU count)
    # --- the GPU path (each is ignored on the CPU but onnx_fp16, which needs CUDA) ---
    onnx_fp16: bool = False  # run the visual graph in float16 (LayerNorm, Softmax stay fp32)
    onnx_io_binding: bool = True  # the engine reads and writes torch tensors in place
    onnx_tensorrt: bool = False  # TensorRT provider first, when ONNX Runtime has it
    trt_cache_dir: Path | None = None  # TensorRT engine/timing caches; None: <store>/.trt-cache
    # CUDA memory all ONNX Runtime sessions may hold, split evenly over the engines that can be
    # open at once (max_loaded_classifiers + ENGINES_KEPT); None: each arena unbounded
    gpu_mem_budget_mib: int | None = Field(default=None, ge=64)
    onnx_tf32: bool = False  # TF32 matmuls on CUDA: faster, ~1e-3 off the float32 reference
    device_decode: bool = False  # on CUDA: decode JPEGs with nvJPEG (off until gpu_check passes)
    # threads decoding and preprocessing images; default min(4, CPU count)
    decode_threads: int = Field(default_factory=lambda: min(4, os.cpu_count() or 1), ge=1)
    # a request of one image up to this size (bytes, or base64 characters) is decoded on the
    # event loop instead of the decode pool (0: always the pool)
    inline_decode_bytes: int = Field(default=32 * 1024, ge=0)
    max_batch_size: int = Field(default=32, ge=1)  # images per engine call
    max_wait_ms: float = Field(default=5.0, ge=0, le=10_000)  # how long a batch waits to fill
    queue_size: int = Field(default=512, ge=1)  # images waiting for the engine; then 429
    max_loaded_classifiers: int = Field(default=8, ge=1)  # loaded versions kept (LRU)
    max_images_per_request: int = Field(default=16, ge=1)
    max_image_pixels: int = Field(default=25_000_000, ge=1)  # declared width x height
    max_body_bytes: int = Field(default=20 * MiB, ge=1)
    # admission control: requests (and their declared body bytes) in flight at once; beyond
    # either, a request is answered 429 with Retry-After before its body is read
    max_inflight_requests: int = Field(default_factory=lambda: 32 * (os.cpu_count() or 1), ge=1)
    max_inflight_bytes: int = Field(default=64 * MiB, ge=1)
    retry_after_s: int = Field(default=1, ge=1)  # the Retry-After of a 429
    max_labels: int = Field(default=1000, ge=1)  # labels named in one request
    max_new_labels: int = Field(default=100, ge=0)  # labels a classifier lacks, per request
    max_label_tokens: int = Field(default=32, ge=1)  # tokens in one label name
    max_label_chars: int = Field(default=300, ge=1)  # characters in one label, before tokenizing
    max_cached_labels: int = Field(default=10_000, ge=1)  # encoded labels kept (LRU)
    default_top_k: int = Field(default=5, ge=1)
    api_key: SecretStr | None = None  # when set, every route but /health/* needs it
    # --- tuning jobs (POST /adapt) ---
    jobs_dir: Path | None = None  # job database and uploads; None: <store>/.jobs
    max_concurrent_jobs: int = Field(default=1, ge=0)  # job processes at once; 0 queues only
    # torch threads of a job process; default half the CPUs, so classification keeps the rest
    job_threads: int = Field(default_factory=lambda: max(1, (os.cpu_count() or 2) // 2), ge=1)
    job_niceness: int = Field(default=10, ge=0, le=19)  # CPU priority drop of a job process
    job_device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    # how long a cancelled job process gets to stop by itself before it is killed
    cancel_grace_s: float = Field(default=10.0, gt=0)
    max_job_images: int = Field(default=1024, ge=2)  # uploaded images per job
    max_job_epochs: int = Field(default=200, ge=1)
    max_queued_jobs: int = Field(default=16, ge=0)  # jobs waiting for a runner; then 429
    job_retention_days: float = Field(default=30.0, gt=0)  # ended jobs (and events) kept
    # the shared job queue of a cluster (postgresql://...); None: SQLite under jobs_dir
    database_url: SecretStr | None = None
    # a running job's lease: renewed every poll, taken over by another runner once it runs out
    job_lease_s: float = Field(default=30.0, ge=2)
    job_max_attempts: int = Field(default=2, ge=1)  # runs of a job whose runners keep dying
    # POST /adapt may publish versions of the default classifier only when this is set
    allow_adapt_default: bool = False
    data_root: Path | None = None  # `dataset` references resolve under it; None: refused
    keep_job_uploads: bool = False  # keep a job's uploaded images after it ends
    # API worker processes of `promptserve serve` sharing the port; with more than one, one
    # engine process owns the model weights, the batcher and the job runner (service.remote)
    workers: int = Field(default=1, ge=1, le=256)
    # set by `promptserve serve` in each API worker it starts: the engine process's socket
    engine_socket: Path | None = None
    host: str = "127.0.0.1"  # for `promptserve serve`
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

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

    @field_validator("api_key")
    @classmethod
    def _blank_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        # PROMPTSERVE_API_KEY= (empty, as compose writes an unset host variable) means no auth
        return value if value is not None and value.get_secret_value() else None


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
