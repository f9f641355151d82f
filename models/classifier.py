"""Loading a published classifier for inference (`load_classifier`), and the one implementation
of labels and scores (`check_labels`, `resolve_labels`, `rank`) for the Python API, the CLI and
the service. The eager learner (`models.labels.load_learner`) encodes labels a classifier lacks."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import Tensor

from promptserve.models.backbone import PreprocessConfig
from promptserve.models.classifier_engine import classifier_engine, preprocess_from_manifest
from promptserve.models.engine_pool import EnginePool
from promptserve.models.engines import EngineKind, OnnxOptions, VisualEngine
from promptserve.models.errors import ArtifactError, InvalidLabelError, UnknownLabelError
from promptserve.models.export import CLASSES_FILE
from promptserve.models.input_engines import BoundInputs
from promptserve.models.integrity import verify_artifact
from promptserve.models.labels import LabelEncoder, shared_label_encoder
from promptserve.models.methods import Learner
from promptserve.models.names import check_distinct, check_name_text, name_key
from promptserve.models.precision import Precision
from promptserve.models.precision_gate import GateResult, GateThresholds, gated_engine
from promptserve.models.preprocess import FastEvalTransform

SHOWN_LABELS = 5  # labels named in an error message


@dataclass
class Classifier:
    """A loaded artifact: the visual engine plus the class embeddings it is scored against."""

    name: str
    version: str
    manifest: dict[str, Any]
    class_names: list[str]
    class_embeddings: Tensor  # [C, D] L2-normalised, on `device`
    logit_scale: float
    preprocess: PreprocessConfig
    engine: VisualEngine
    device: torch.device
    path: Path | None = None  # the artifact directory; needed to encode new labels
    precision_gate: GateResult | None = None  # a reduced precision's gate (None: float32)

    def __post_init__(self) -> None:
        self.transform = FastEvalTransform(self.preprocess)  # eval_transform, cheaper

    @property
    def label_encoder(self) -> LabelEncoder:
        """The process's shared encoder for this device (the service brings its own)."""
        return shared_label_encoder(str(self.device))

    def text_learner(self) -> Learner:
        """The eager learner of this artifact (loaded once), for encoding labels it lacks."""
        return self.label_encoder.learner(self)

    def label_set(
        self, labels: Sequence[str] | None, max_tokens: int | None = None, **limits: int
    ) -> LabelSet:
        """The labels to score against (all classes when None): names it has come from the
        stored rows, the rest are encoded by its learned text path (through `label_encoder`,
        names over `max_tokens` refused) in one batch. `limits` go to `check_labels`."""
        if labels is None:
            return resolve_labels(self, None)
        request = check_labels(self, labels, **limits)
        if not request.new:
            return resolve_labels(self, request)
        encoded = self.label_encoder.encode(self, request.new, max_tokens)  # [N, D]
        return resolve_labels(self, request, encoded)

    def embed(self, pixels: Tensor) -> Tensor:
        """[B, 3, S, S] normalised pixels -> [B, D] normalised image embeddings."""
        return self.engine(pixels).to(self.device)

    @property
    def engine_key(self) -> int:
        """Equal for classifiers that run on the same engine object (a shared graph), so
        their images may share one engine call; distinct otherwise."""
        if isinstance(self.engine, BoundInputs):
            return id(self.engine.engine)
        return id(self.engine)

    @property
    def own_bytes(self) -> int:
        """Memory that is this classifier's own: its class embeddings and the tensors it feeds
        a shared prompt graph (the engine is shared, or, for a self-contained artifact,
        counted with the engines)."""
        own = self.class_embeddings.numel() * self.class_embeddings.element_size()
        return own + (self.engine.nbytes if isinstance(self.engine, BoundInputs) else 0)

    def logits(self, embeddings: Tensor, class_embeddings: Tensor | None = None) -> Tensor:
        """[B, D] image embeddings -> [B, C] scaled cosine scores (own classes by default)."""
        classes = self.class_embeddings if class_embeddings is None else class_embeddings
        return self.logit_scale * embeddings @ classes.t()

    def classify(
        self, images: list[Image.Image], top_k: int = 5, labels: Sequence[str] | None = None
    ) -> list[list[Prediction]]:
        """Per image, the `top_k` most probable labels with their probabilities.

        `labels` (default: the classifier's classes) may name classes it was not trained on;
        those are encoded through its learned text path (see `label_set`).
        """
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if not images:
            raise ValueError("classify needs at least one image")
        label_set = self.label_set(labels)
        pixels = torch.stack([self.transform(image) for image in images]).to(self.device)
        return rank(self, self.embed(pixels), label_set, top_k)


# --- labels and scores: the one implementation, for the Python API, the CLI and the service ---


class Prediction(NamedTuple):
    label: str
    score: float  # softmax probability over the label set


@dataclass(frozen=True)
class LabelRequest:
    """Checked label names: which the classifier has, and which must be encoded."""

    names: list[str]
    new: list[str]  # names the classifier lacks, in request order


@dataclass(frozen=True)
class LabelSet:
    names: list[str]
    embeddings: Tensor  # [L, D] L2-normalised, on the classifier's device
    encoded: list[str] = field(default_factory=list)  # names encoded on the fly (not stored)


class ClassNames(Protocol):
    """What label checks read of a classifier version (a loaded one, or its manifest)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def class_names(self) -> list[str]: ...


def check_labels(
    classifier: ClassNames,
    labels: Sequence[str],
    *,
    max_labels: int | None = None,
    max_new: int | None = None,
    max_chars: int | None = None,
) -> LabelRequest:
    """Validate requested names and split them into stored and new ones.

    The count and length limits are checked first, so a huge request costs nothing more than
    being counted. Raises InvalidLabelError for an empty list or name, a duplicate, too many
    labels, a name over `max_chars` or too many new ones; UnknownLabelError for a new name when
    `max_new` is 0 (open vocabulary switched off).
    """
    if max_labels is not None and len(labels) > max_labels:
        raise InvalidLabelError(f"{len(labels)} labels requested; at most {max_labels} allowed")
    if max_chars is not None:
        for label in labels:
            if len(label) > max_chars:
                raise InvalidLabelError(
                    f"label {label[:40]!r}... is {len(label)} characters long; "
                    f"at most {max_chars} allowed"
                )
    names = [label.strip() for label in labels]
    if not names or not all(names):
        raise InvalidLabelError("labels must be a non-empty list of non-empty class names")
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        shown = ", ".join(map(repr, duplicates[:SHOWN_LABELS]))
        raise InvalidLabelError(f"labels must be distinct: duplicate label(s) {shown}")
    names = [check_name_text(name, "label") for name in names]
    check_distinct(names, "labels")
    known = set(classifier.class_names)
    if any(name not in known for name in names):  # only then: a key per stored class
        # a spelling of a stored class (case, width, whitespace) is that class
        stored = {name_key(name): name for name in classifier.class_names}
        names = [stored.get(name_key(name), name) for name in names]
    new = [name for name in names if name not in known]
    if new and max_new == 0:
        shown = ", ".join(repr(u) for u in new[:SHOWN_LABELS])
        more = f" and {len(new) - SHOWN_LABELS} more" if len(new) > SHOWN_LABELS else ""
        raise UnknownLabelError(
            f"classifier {classifier.name!r} version {classifier.version} has no class {shown}"
            f"{more}; labels must be among its classes (GET /classifiers/{classifier.name})"
        )
    if max_new is not None and len(new) > max_new:
        raise InvalidLabelError(
            f"{len(new)} labels are not among the classifier's classes; at most {max_new} new "
            "labels are encoded per request"
        )
    return LabelRequest(names, new)


def resolve_labels(
    classifier: Classifier, request: LabelRequest | None, encoded: Tensor | None = None
) -> LabelSet:
    """The label set to score against: all classes when `request` is None, else its names,
    with stored rows for known classes and `encoded` ([N, D], in `request.new` order) for new."""
    if request is None:
        return LabelSet(list(classifier.class_names), classifier.class_embeddings)
    index = {name: i for i, name in enumerate(classifier.class_names)}
    device = classifier.class_embeddings.device
    new_row = {name: i for i, name in enumerate(request.new)}
    if request.new:
        assert encoded is not None
        assert encoded.shape[0] == len(request.new)
        table = torch.cat([classifier.class_embeddings, encoded.to(device)])  # [C + N, D]
    else:
        table = classifier.class_embeddings
    offset = len(classifier.class_names)
    rows = [index[n] if n in index else offset + new_row[n] for n in request.names]
    embeddings = table.index_select(0, torch.tensor(rows, device=device))  # [L, D]
    return LabelSet(list(request.names), embeddings, list(request.new))


def rank(
    classifier: Classifier, embeddings: Tensor, labels: LabelSet, top_k: int
) -> list[list[Prediction]]:
    """[B, D] image embeddings -> per image the `top_k` most probable labels, best first."""
    logits = classifier.logits(embeddings.to(labels.embeddings.device), labels.embeddings)
    probs = F.softmax(logits.float(), dim=-1)  # [B, L]
    values, indices = probs.topk(min(top_k, len(labels.names)), dim=-1)
    return [
        [
            Prediction(labels.names[i], float(p))
            for p, i in zip(row_p.tolist(), row_i.tolist(), strict=True)
        ]
        for row_p, row_i in zip(values.cpu(), indices.cpu(), strict=True)
    ]


def load_classifier(
    path: Path,
    *,
    engine: EngineKind = "onnx",
    device: str = "cpu",
    threads: int | None = None,
    options: OnnxOptions | None = None,
    engines: EnginePool | None = None,
    precision: Precision = "fp32",
    gate: GateThresholds | None = None,
) -> Classifier:
    """Verify the artifact at `path` and load it for inference on `device` (`threads`: the
    engine's CPU threads; `options`: ONNX Runtime's; see `open_engine`).

    A format-2 artifact runs on its store's shared graph: through `engines` when given (the
    pool's kind, device and threads apply, and classifiers on one graph share one engine),
    else on an engine opened for this classifier alone. Either way only the classifier's own
    small tensors are read per load. At a reduced `precision` the engine must pass its
    accuracy `gate` against float32 first, else float32 serves (`models.precision_gate`)."""
    path = Path(path)
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ArtifactError(f"device {device!r} requested but CUDA is not available")
    manifest = verify_artifact(path)
    classes = load_file(str(path / CLASSES_FILE))["embeddings"].to(target)  # [C, D]
    if classes.shape[0] != len(manifest["class_names"]):
        raise ArtifactError(
            f"{path}: {classes.shape[0]} class embeddings for "
            f"{len(manifest['class_names'])} class names"
        )
    preprocess = preprocess_from_manifest(manifest)
    open_at = functools.partial(
        classifier_engine, path, manifest, engine, device, threads, options, engines
    )
    thresholds = gate or GateThresholds()
    visual, result = gated_engine(
        manifest["name"], precision, open_at, classes, preprocess, thresholds
    )
    return Classifier(
        name=manifest["name"],
        version=str(manifest["version"]),
        manifest=manifest,
        class_names=list(manifest["class_names"]),
        class_embeddings=classes,
        logit_scale=float(manifest["logit_scale"]),
        preprocess=preprocess,
        engine=visual,
        device=target,
        path=path,
        precision_gate=result,
    )
