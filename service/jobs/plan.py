"""From an adapt request to a queued job: validate everything, save the uploads, queue.

Everything that can be checked before training is checked here, so a job that is accepted
(202) fails only for reasons that need training to show: the method is registered, the config
overrides fit the method's typed config, the backbone is a name (never a server path), the images
decode within the pixel limit, there are at least two classes, a dataset reference stays under
the data root. Uploaded images are written under the job's directory, with a JSONL manifest the
training code reads like any other, before the job row exists: a worker never sees a job whose
files are missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from promptserve.models.artifact import check_name, list_versions, read_manifest
from promptserve.models.backbone import list_architectures
from promptserve.models.errors import ArtifactError, BackboneError
from promptserve.models.methods import get_method, make_config
from promptserve.service.classify.images import decode_image
from promptserve.service.errors import (
    BadRequestError,
    IdempotencyConflictError,
    InvalidRequestError,
    ProtectedClassifierError,
    TooManyImagesError,
)
from promptserve.service.job_uploads import UploadStore
from promptserve.service.jobs.housekeeping import UPLOADS_DIR
from promptserve.service.jobs.spec import UPLOAD, JobSpec, dump_spec
from promptserve.service.jobs.store import IdempotencyMismatchError, Job, JobStore, new_job_id
from promptserve.service.settings import Settings, resolve_device
from promptserve.training.api import TrainRequest, default_preset, summarize_dataset
from promptserve.training.errors import DataError

log = logging.getLogger(__name__)

MAX_LABEL_CHARS = 200
MAX_REFERENCE_CHARS = 1024
MANIFEST = "manifest.jsonl"
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif"}


@dataclass(frozen=True, kw_only=True)
class AdaptRequest:
    """What a client asks of POST /adapt, whatever the body's shape (JSON or multipart)."""

    name: str
    method: str = "coop"
    backbone: str | None = None  # None: the default classifier's backbone
    preset: str | None = None  # None: `mini` on the mini backbone, when the method has one
    shots: int = 16
    epochs: int | None = None
    seed: int = 1
    config: dict[str, Any] = field(default_factory=dict)  # method config overrides
    dataset: str | None = None  # a reference under the data root, instead of uploads


@dataclass(frozen=True)
class JobPlan:
    """A validated adapt request, ready to be written and queued."""

    spec: JobSpec  # its train.data is set when the uploads are written (see submit_job)
    fingerprint: str
    uploads: list[tuple[bytes, str, str]] = field(default_factory=list)  # (data, label, suffix)


def plan_job(
    request: AdaptRequest, uploads: list[tuple[bytes, str]] | None, settings: Settings
) -> JobPlan:
    """Validate an adapt request; blocking (decodes images, lists a dataset): call off the loop."""
    check_name(request.name)
    if request.name == settings.default_classifier and not settings.allow_adapt_default:
        raise ProtectedClassifierError(
            f"{request.name!r} is the default classifier: tuning jobs may not publish versions "
            "of it unless the service allows it (PROMPTSERVE_ALLOW_ADAPT_DEFAULT=true); "
            "choose another name"
        )
    get_method(request.method)  # unknown -> 422 listing the registered ones
    backbone = request.backbone or default_backbone(settings)
    if request.backbone is not None:
        check_backbone_name(request.backbone)
    preset = request.preset
    if preset is None:  # the backbone's own recipe (`mini` on mini), as `promptserve train`
        preset = default_preset(request.method, backbone)
    config = make_config(  # unknown fields or bad values -> ConfigError -> 422
        request.method,
        request.config | ({"epochs": request.epochs} if request.epochs is not None else {}),
        preset=preset,
    )
    if config.epochs > settings.max_job_epochs:
        raise InvalidRequestError(
            f"epochs must be at most {settings.max_job_epochs}, the config asks for {config.epochs}"
        )
    if (uploads is None) == (request.dataset is None):
        raise InvalidRequestError("send either images with labels, or a dataset reference")
    train = TrainRequest(
        method=request.method,
        data="",  # set below (a dataset) or when the uploads are written
        store=settings.store,
        name=request.name,
        backbone=backbone,
        shots=request.shots,
        seed=request.seed,
        epochs=request.epochs,
        overrides=request.config,
        preset=preset,
        device=resolve_device(settings.job_device),
        heldout=True,
    )
    if uploads is not None:
        return _plan_uploads(train, uploads, settings)
    assert request.dataset is not None  # checked above
    return _plan_dataset(train, request.dataset, settings)


def check_backbone_name(spec: str) -> None:
    """A backbone a request may ask for: ARCH or ARCH:TAG of a known architecture, no paths."""
    arch, _, _ = spec.partition(":")
    if "@" in spec or "/" in spec or "\\" in spec or Path(spec).suffix in {".safetensors", ".pt"}:
        raise InvalidRequestError(
            f"backbone {spec!r} is not allowed: name an architecture (ARCH or ARCH:TAG), "
            "not a file; checkpoints on the server are for the default classifier's settings"
        )
    known = list_architectures()
    if arch not in known:
        raise InvalidRequestError(
            f"unknown backbone architecture {arch!r}; known: {', '.join(known)}"
        )


def default_backbone(settings: Settings) -> str:
    """The backbone spec of the default classifier's newest version (the setting if none)."""
    try:
        versions = list_versions(settings.store, settings.default_classifier)
        if versions:
            manifest = read_manifest(settings.store / settings.default_classifier / versions[-1])
            return str(manifest["backbone"]["spec"])
    except (ArtifactError, BackboneError, KeyError, TypeError):
        log.warning("cannot read the default classifier's backbone; using the setting")
    return settings.default_backbone


def _plan_uploads(
    train: TrainRequest, uploads: list[tuple[bytes, str]], settings: Settings
) -> JobPlan:
    if not uploads:
        raise InvalidRequestError("no images: send at least one image per class")
    if len(uploads) > settings.max_job_images:
        raise TooManyImagesError(
            f"{len(uploads)} images; a job takes at most {settings.max_job_images}"
        )
    files = []
    digest = hashlib.sha256()
    for index, (data, label) in enumerate(uploads):
        label = label.strip() if isinstance(label, str) else ""
        if not label:
            raise InvalidRequestError(f"image {index} has no label")
        if len(label) > MAX_LABEL_CHARS:
            raise InvalidRequestError(
                f"label of image {index} is over {MAX_LABEL_CHARS} characters"
            )
        image = decode_image(data, settings.max_image_pixels, index)  # 400 / 413 when bad
        suffix = SUFFIXES.get(image.format or "", ".img")
        image.close()
        files.append((data, label, suffix))
        digest.update(hashlib.sha256(data).digest() + label.encode() + b"\0")
    classes = sorted({label for _, label, _ in files})
    if len(classes) < 2:
        raise InvalidRequestError(f"a classifier needs at least 2 classes; got only {classes}")
    spec = JobSpec(train=train, data=UPLOAD, classes=classes, images=len(files))
    return JobPlan(spec, _fingerprint(spec, digest.hexdigest()), files)


def _plan_dataset(train: TrainRequest, reference: str, settings: Settings) -> JobPlan:
    if settings.data_root is None:
        raise BadRequestError(
            "dataset references are disabled: the service has no data root "
            "(set PROMPTSERVE_DATA_ROOT), so upload the images instead"
        )
    if len(reference) > MAX_REFERENCE_CHARS or "\0" in reference:
        raise InvalidRequestError(
            f"dataset must be a relative path of at most {MAX_REFERENCE_CHARS} characters, "
            "without NUL characters"
        )
    root = settings.data_root.resolve()
    try:
        path = (root / reference).resolve()
    except (OSError, RuntimeError):  # a symlink loop, a name the OS refuses
        raise BadRequestError(f"dataset {reference[:80]!r} cannot be resolved") from None
    if not path.is_relative_to(root):
        raise BadRequestError(f"dataset {reference!r} is outside the data root")
    try:
        found = summarize_dataset(str(path), within=str(root))
    except DataError as exc:
        raise InvalidRequestError(
            f"cannot open dataset {reference!r}: {str(exc).replace(str(root), '<data root>')}"
        ) from None
    if len(found.class_names) < 2:
        raise InvalidRequestError(f"dataset {reference!r} has fewer than 2 classes")
    spec = JobSpec(
        train=replace(train, data=str(path), within=str(root)),
        data=reference,
        classes=found.class_names,
        images=found.images,
    )
    return JobPlan(spec, _fingerprint(spec, ""))


def _fingerprint(spec: JobSpec, images: str) -> str:
    """What makes two requests the same job: the spec and the uploads' content, not where on
    the server the files would go."""
    text = json.dumps({"spec": dump_spec(spec), "images": images}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def submit_job(
    plan: JobPlan,
    jobs: JobStore,
    job_root: Path,
    idempotency_key: str | None,
    uploads_to: UploadStore | None = None,
) -> tuple[Job, bool]:
    """Write the job's files (to the object store too, when there is one), then queue it;
    returns (job, created).

    A repeated Idempotency-Key returns the first job (created False) without writing anything;
    the same key with a different request is a 422.
    """
    if idempotency_key is not None:
        existing = jobs.find_by_key(idempotency_key)
        if existing is not None:
            return _same_request(existing, plan), False
    job_id = new_job_id()
    directory = job_root / job_id
    spec = plan.spec
    try:
        if plan.uploads:
            manifest = _write_uploads(directory / UPLOADS_DIR, plan.uploads)
            if uploads_to is not None:
                uploads_to.push(job_id, manifest)
            spec = spec.with_data_path(manifest)
        job, created = jobs.create(
            spec, fingerprint=plan.fingerprint, idempotency_key=idempotency_key, job_id=job_id
        )
    except IdempotencyMismatchError as exc:  # a concurrent request with the same key won
        _discard(directory, job_id, uploads_to)
        raise _conflict(exc.job) from None
    except BaseException:
        _discard(directory, job_id, uploads_to)
        raise
    if not created:
        _discard(directory, job_id, uploads_to)
        return _same_request(job, plan), False
    return job, True


def _discard(directory: Path, job_id: str, uploads_to: UploadStore | None) -> None:
    """The files of a job that was not queued."""
    shutil.rmtree(directory, ignore_errors=True)
    if uploads_to is not None:
        uploads_to.drop(job_id)


def _same_request(job: Job, plan: JobPlan) -> Job:
    if job.fingerprint != plan.fingerprint:
        raise _conflict(job)
    return job


def _conflict(job: Job) -> IdempotencyConflictError:
    return IdempotencyConflictError(
        f"this Idempotency-Key was used for job {job.id} with a different request; "
        "use a new key for a new job"
    )


def _write_uploads(directory: Path, uploads: list[tuple[bytes, str, str]]) -> Path:
    """Images as ``<n><suffix>`` plus a JSONL manifest (path, label); returns the manifest."""
    directory.mkdir(parents=True)
    lines = []
    for index, (data, label, suffix) in enumerate(uploads):
        file = f"{index:06d}{suffix}"
        (directory / file).write_bytes(data)
        lines.append(json.dumps({"path": file, "label": label}))
    manifest = directory / MANIFEST
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest
