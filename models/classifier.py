"""Loading a published classifier: the inference view (`load_classifier`) and the eager
learner (`load_learner`) for resuming training or encoding new class names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import Tensor

from models.artifact import verify_artifact
from models.backbone import Backbone, PreprocessConfig, load_backbone
from models.engines import Engine, VisualEngine, open_engine
from models.errors import ArtifactError
from models.export import CLASSES_FILE, LEARNER_FILE
from models.methods import Learner, create_method
from models.preprocess import eval_transform


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

    def __post_init__(self) -> None:
        self.transform = eval_transform(self.preprocess)
        self._learner: Learner | None = None  # loaded on the first label it lacks

    def text_learner(self) -> Learner:
        """The eager learner of this artifact (loaded once), for encoding labels it lacks."""
        if self._learner is None:
            if self.path is None:
                raise ArtifactError(f"{self.name} version {self.version}: no artifact path")
            self._learner = load_learner(self.path, device=str(self.device))
        return self._learner

    def label_embeddings(self, labels: list[str], learner: Learner | None = None) -> Tensor:
        """[L] label names -> [L, D]: stored rows for own classes, the rest encoded by the
        method's learned text path (`learner`, default `text_learner()`) in one batch."""
        index = {name: i for i, name in enumerate(self.class_names)}
        new = [name for name in labels if name not in index]
        rows = torch.empty(len(labels), self.class_embeddings.shape[1], device=self.device)
        known = [i for i, name in enumerate(labels) if name in index]
        if known:
            stored = torch.tensor([index[labels[i]] for i in known], device=self.device)
            rows[known] = self.class_embeddings.index_select(0, stored)
        if new:
            encoded = encode_labels(learner or self.text_learner(), new)  # [N, D]
            rows[[i for i, name in enumerate(labels) if name not in index]] = encoded.to(rows)
        return rows

    def embed(self, pixels: Tensor) -> Tensor:
        """[B, 3, S, S] normalised pixels -> [B, D] normalised image embeddings."""
        return self.engine(pixels).to(self.device)

    def logits(self, embeddings: Tensor, class_embeddings: Tensor | None = None) -> Tensor:
        """[B, D] image embeddings -> [B, C] scaled cosine scores (own classes by default)."""
        classes = self.class_embeddings if class_embeddings is None else class_embeddings
        return self.logit_scale * embeddings @ classes.t()

    def classify(
        self, images: list[Image.Image], top_k: int = 5, labels: list[str] | None = None
    ) -> list[list[tuple[str, float]]]:
        """Per image, the `top_k` most probable labels with their probabilities.

        `labels` (default: the classifier's classes) may name classes it was not trained on;
        those are encoded through its learned text path (see `label_embeddings`).
        """
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if not images:
            raise ValueError("classify needs at least one image")
        names = list(self.class_names) if labels is None else list(labels)
        if not names or len(set(names)) != len(names) or not all(n.strip() for n in names):
            raise ValueError("labels must be distinct, non-empty names")
        classes = None if labels is None else self.label_embeddings(names)  # [L, D]
        pixels = torch.stack([self.transform(image) for image in images]).to(self.device)
        probs = F.softmax(self.logits(self.embed(pixels), classes), dim=-1)  # [B, L]
        values, indices = probs.topk(min(top_k, len(names)), dim=-1)
        return [
            [(names[i], float(p)) for p, i in zip(row_p.tolist(), row_i.tolist(), strict=True)]
            for row_p, row_i in zip(values, indices, strict=True)
        ]


def load_classifier(path: Path, *, engine: Engine = "onnx", device: str = "cpu") -> Classifier:
    """Verify the artifact at `path` and load it for inference on `device`."""
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
    return Classifier(
        name=manifest["name"],
        version=str(manifest["version"]),
        manifest=manifest,
        class_names=list(manifest["class_names"]),
        class_embeddings=classes,
        logit_scale=float(manifest["logit_scale"]),
        preprocess=preprocess_from_manifest(manifest),
        engine=open_engine(path, engine, device),
        device=target,
        path=path,
    )


def preprocess_from_manifest(manifest: dict[str, Any]) -> PreprocessConfig:
    cfg = dict(manifest["preprocessing"])
    return PreprocessConfig(**{**cfg, "mean": tuple(cfg["mean"]), "std": tuple(cfg["std"])})


def load_learner(path: Path, *, device: str = "cpu", backbone: Backbone | None = None) -> Learner:
    """Rebuild the eager learner of the artifact at `path` (re-encode classes, resume training).

    `backbone` (loaded from the manifest's spec when None) may be shared by many learners: the
    towers are frozen and a learner only wraps them.

    Raises:
        ArtifactError: the files fail verification, or the backbone loaded now is not the one the
            artifact was built on (its weights hash differs).
    """
    path = Path(path)
    manifest = verify_artifact(path)
    recorded = manifest["backbone"]
    if backbone is None:
        backbone = load_backbone(recorded["spec"], device=device)
    if backbone.id.weights_sha256 != recorded["weights_sha256"]:
        raise ArtifactError(
            f"backbone {recorded['spec']!r} now has weights {backbone.id.weights_sha256[:12]}, "
            f"but {path} was built on {recorded['weights_sha256'][:12]}"
        )
    learner = create_method(manifest["method"], backbone, manifest["config"]).to(device)
    learner.load_learned_state_dict(load_file(str(path / LEARNER_FILE), device=str(device)))
    return learner.eval()


def encode_labels(learner: Learner, names: list[str]) -> Tensor:
    """[N] names -> [N, D] normalised embeddings from `learner`'s text path, in eval mode."""
    was_training = learner.training
    learner.eval()
    try:
        with torch.inference_mode():
            return learner.encode_classes(list(names)).float()
    finally:
        learner.train(was_training)


def label_token_count(tokenizer: Any, name: str) -> int:
    """Tokens `name` takes in a prompt (without start/end tokens)."""
    encode = getattr(tokenizer, "encode", None)
    if callable(encode):
        return len(encode(name))
    ids = tokenizer([name])[0]  # [T], padded with 0 after the end token
    return int((ids != 0).sum()) - 2
