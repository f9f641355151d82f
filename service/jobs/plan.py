"""From an adapt request to a queued job: validate everything, save the uploads, queue.

Everything that can be checked before training is checked here, so a job that is accepted
(202) fails only for reasons that need training to show: the method is registered, the config
overrides fit the method's typed config, the backbone is a name (never a server path), the images
decode within the pixel limit, there are at least two classes, a dataset reference stays under
the data root, and the method config that training will resolve (the data's layer included)
stays within the epoch cap. Uploaded images are written under the job's directory, with a
JSONL manifest the training code reads like any other, before the job row exists: a runner never
sees a job whose files are missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from promptserve.models.artifact import check_name, list_versions, read_manifest
from promptserve.models.backbone import list_architectures
from promptserve.models.errors import ArtifactError, BackboneError
from promptserve.service.aliases import LATEST, check_alias
from promptserve.service.api.schemas.jobs import AdaptCreate
from promptserve.service.classify.decoding import decode_image
from promptserve.service.errors import (
    BadRequestError,
    IdempotencyConflictError,
    InvalidRequestError,
    ProtectedClassifierError,
    TooManyImagesError,
)
from promptserve.service.jobs.classes import check_class_counts, check_class_names
from promptserve.service.jobs.housekeeping import JobFiles
from promptserve.service.jobs.spec import UPLOAD, JobSpec, dump_spec
from promptserve.service.jobs.store import IdempotencyMismatchError, Job, JobStore, new_job_id
from promptserve.service.settings import Settings, resolve_device
from promptserve.training.api import (
    ImageSource,
    TrainRequest,
    check_method,
    config_for,
    default_preset,
    from_memory,
    open_within,
)
from promptserve.training.auto import candidate_requests, fold_count, is_auto
from promptserve.training.errors import DataError
from promptserve.training.request import AUTO_BUDGET_S

log = logging.getLogger(__name__)

MAX_LABEL_CHARS = 200
MAX_REFERENCE_CHARS = 1024
DATASET_LIST = "manifest.jsonl"  # the uploads as a dataset (path, label); no artifact manifest
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif"}


@dataclass(frozen=True)
class JobPlan:
    """A validated adapt request, ready to be written and queued."""

    spec: JobSpec  # its train.data is set when the uploads are written (see submit_job)
    fingerprint: str
    uploads: list[tuple[bytes, str, str]] = field(default_factory=list)  # (data, label, suffix)

    def traced(self, traceparent: str | None) -> JobPlan:
        """The plan with the request's trace in its spec (not in its fingerprint: the same
        request traced twice is still one job)."""
        if traceparent is None:
            return self
        return replace(self, spec=replace(self.spec, traceparent=traceparent))


def plan_job(
    create: AdaptCreate, uploads: list[tuple[bytes, str]] | None, settings: Settings
) -> JobPlan:
    """Validate an adapt request; blocking (decodes images, lists a dataset): call off the loop."""
    check_name(create.name)
    if create.name == settings.default_classifier and not settings.allow_adapt_default:
        raise ProtectedClassifierError(
            f"{create.name!r} is the default classifier: tuning jobs may not publish versions "
            "of it unless the service allows it (PROMPTSERVE_ALLOW_ADAPT_DEFAULT=true); "
            "choose another name"
        )
    check_method(create.method)  # unknown -> 422 listing the registered ones (and auto)
    backbone = create.backbone or default_backbone(settings)
    if create.backbone is not None:
        check_backbone_name(create.backbone)
    if (uploads is None) == (create.dataset is None):
        raise InvalidRequestError("send either images with labels, or a dataset reference")
    preset = create.preset
    if preset is None and not is_auto(create.method):  # the backbone's own recipe, as `train`
        preset = default_preset(create.method, backbone)
    train = TrainRequest(
        method=create.method,
        data="",  # set below (a dataset) or when the uploads are written
        store=settings.store,
        name=create.name,
        backbone=backbone,
        shots=create.shots,
        seed=create.seed,
        epochs=create.epochs,
        overrides=create.config,
        preset=preset,
        device=resolve_device(settings.job_device),
        heldout=True,
        auto_budget_s=create.auto_budget_s or AUTO_BUDGET_S,
    )
    publish = create.publish or "gated"
    alias = check_alias(create.alias or LATEST)
    if uploads is not None:
        plan, source = _plan_uploads(train, uploads, settings)
    else:
        assert create.dataset is not None  # checked above
        plan, source = _plan_dataset(train, create.dataset, settings)
    spec = replace(plan.spec, publish=publish, alias=alias)
    plan = replace(plan, spec=spec, fingerprint=_fingerprint(spec, plan.fingerprint))
    _check_config(plan.spec.train, source, settings)
    return plan


def _check_config(train: TrainRequest, source: ImageSource, settings: Settings) -> None:
    """Resolve the method config as training will (the data's layer included): unknown fields
    or bad values are a ConfigError (422), and the epochs it trains must be within the cap.
    For method auto, every candidate's config, and the images must allow validation folds."""
    trains = [train]
    if is_auto(train.method):
        trains = [request for _, request in candidate_requests(train)]
        per_class = source.counts().values()
        try:
            fold_count(n if train.shots is None else min(n, train.shots) for n in per_class)
        except DataError as exc:
            raise InvalidRequestError(str(exc)) from None
    for request in trains:
        config = config_for(request, source)
        if config.epochs > settings.max_job_epochs:
            raise InvalidRequestError(
                f"epochs must be at most {settings.max_job_epochs}, "
                f"the {request.method} config asks for {config.epochs}"
            )


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
) -> tuple[JobPlan, ImageSource]:
    if not uploads:
        raise InvalidRequestError("no images: send at least one image per class")
    if len(uploads) > settings.max_job_images:
        raise TooManyImagesError(
            f"{len(uploads)} images; a job takes at most {settings.max_job_images}"
        )
    labels = []
    for index, (_, label) in enumerate(uploads):
        label = label.strip() if isinstance(label, str) else ""
        if not label:
            raise InvalidRequestError(f"image {index} has no label")
        if len(label) > MAX_LABEL_CHARS:
            raise InvalidRequestError(
                f"label of image {index} is over {MAX_LABEL_CHARS} characters"
            )
        labels.append(label)
    # the names and counts before any image is decoded
    labels = check_class_names(labels, train.backbone, settings)
    check_class_counts(labels, settings)
    files = []
    digest = hashlib.sha256()
    for index, ((data, _), label) in enumerate(zip(uploads, labels, strict=True)):
        image = decode_image(data, settings.max_image_pixels, index)  # 400 / 413 when bad
        suffix = SUFFIXES.get(image.format or "", ".img")
        image.close()
        files.append((data, label, suffix))
        digest.update(hashlib.sha256(data).digest() + label.encode() + b"\0")
    classes = sorted(set(labels))
    spec = JobSpec(train=train, data=UPLOAD, classes=classes, images=len(files))
    source = from_memory([(data, label) for data, label, _ in files])
    return JobPlan(spec, _fingerprint(spec, digest.hexdigest()), files), source


def _plan_dataset(
    train: TrainRequest, reference: str, settings: Settings
) -> tuple[JobPlan, ImageSource]:
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
        source = open_within(str(path), str(root))
    except DataError as exc:
        raise InvalidRequestError(
            f"cannot open dataset {reference!r}: {str(exc).replace(str(root), '<data root>')}"
        ) from None
    if len(source.class_names) < 2:
        raise InvalidRequestError(f"dataset {reference!r} has fewer than 2 classes")
    check_class_names(source.class_names, train.backbone, settings)
    check_class_counts([item.label for item in source.items], settings)
    spec = JobSpec(
        train=replace(train, data=str(path), within=str(root)),
        data=reference,
        classes=list(source.class_names),
        images=len(source),
    )
    return JobPlan(spec, _fingerprint(spec, "")), source


def _fingerprint(spec: JobSpec, images: str) -> str:
    """What makes two requests the same job: the spec and the uploads' content, not where on
    the server the files would go."""
    text = json.dumps({"spec": dump_spec(spec), "images": images}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def submit_job(
    plan: JobPlan,
    jobs: JobStore,
    files: JobFiles,
    idempotency_key: str | None,
    owner: str | None = None,
    request_id: str | None = None,
    max_queued: int | None = None,
) -> tuple[Job, bool]:
    """Write the job's files (to the object store too, when there is one), then queue it for
    `owner` (the API key's name); returns (job, created).

    The job store checks the Idempotency-Key (`JobStore.create`): a repeated key returns the
    first job (created False) and the files just written are removed; the same key with a
    different request is a 422; with `max_queued` jobs queued already, QueueFullError (the
    count and the insert are one transaction). The job keeps `request_id` (the request's,
    which is not part of the fingerprint: a retry with a new id is the same job).
    """
    job_id = new_job_id()
    spec = replace(plan.spec, request_id=request_id)
    try:
        if plan.uploads:
            dataset_list = _write_uploads(files.uploads(job_id), plan.uploads)
            files.share(job_id, dataset_list)  # to the object store, when there is one
            spec = spec.with_data_path(dataset_list)
        job, created = jobs.create(
            spec,
            fingerprint=plan.fingerprint,
            idempotency_key=idempotency_key,
            job_id=job_id,
            owner=owner,
            max_queued=max_queued,
        )
    except IdempotencyMismatchError as exc:
        files.remove(job_id)
        raise IdempotencyConflictError(
            f"this Idempotency-Key was used for job {exc.job.id} with a different request; "
            "use a new key for a new job"
        ) from None
    except BaseException:
        files.remove(job_id)
        raise
    if not created:
        files.remove(job_id)
    return job, created


def _write_uploads(directory: Path, uploads: list[tuple[bytes, str, str]]) -> Path:
    """Images as ``<n><suffix>`` plus a JSONL dataset list (path, label); returns the list."""
    directory.mkdir(parents=True)
    lines = []
    for index, (data, label, suffix) in enumerate(uploads):
        file = f"{index:06d}{suffix}"
        (directory / file).write_bytes(data)
        lines.append(json.dumps({"path": file, "label": label}))
    dataset_list = directory / DATASET_LIST
    dataset_list.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dataset_list
