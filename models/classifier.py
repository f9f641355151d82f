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
from models.backbone import PreprocessConfig, load_backbone
from models.errors import ArtifactError
from models.export import CLASSES_FILE, LEARNER_FILE, Engine, VisualEngine, open_engine
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

    def __post_init__(self) -> None:
        self.transform = eval_transform(self.preprocess)

    def embed(self, pixels: Tensor) -> Tensor:
        """[B, 3, S, S] normalised pixels -> [B, D] normalised image embeddings."""
        return self.engine(pixels).to(self.device)

    def logits(self, embeddings: Tensor, class_embeddings: Tensor | None = None) -> Tensor:
        """[B, D] image embeddings -> [B, C] scaled cosine scores (own classes by default)."""
        classes = self.class_embeddings if class_embeddings is None else class_embeddings
        return self.logit_scale * embeddings @ classes.t()

    def classify(self, images: list[Image.Image], top_k: int = 5) -> list[list[tuple[str, float]]]:
        """Per image, the `top_k` most probable class names with their probabilities."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if not images:
            raise ValueError("classify needs at least one image")
        pixels = torch.stack([self.transform(image) for image in images]).to(self.device)
        probs = F.softmax(self.logits(self.embed(pixels)), dim=-1)  # [B, C]
        values, indices = probs.topk(min(top_k, len(self.class_names)), dim=-1)
        return [
            [
                (self.class_names[i], float(p))
                for p, i in zip(row_p.tolist(), row_i.tolist(), strict=True)
            ]
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
    )


def preprocess_from_manifest(manifest: dict[str, Any]) -> PreprocessConfig:
    cfg = dict(manifest["preprocessing"])
    return PreprocessConfig(**{**cfg, "mean": tuple(cfg["mean"]), "std": tuple(cfg["std"])})


def load_learner(path: Path, *, device: str = "cpu") -> Learner:
    """Rebuild the eager learner of the artifact at `path` (re-encode classes, resume training).

    Raises:
        ArtifactError: the files fail verification, or the backbone loaded now is not the one the
            artifact was built on (its weights hash differs).
    """
    path = Path(path)
    manifest = verify_artifact(path)
    recorded = manifest["backbone"]
    backbone = load_backbone(recorded["spec"], device=device)
    if backbone.id.weights_sha256 != recorded["weights_sha256"]:
        raise ArtifactError(
            f"backbone {recorded['spec']!r} now has weights {backbone.id.weights_sha256[:12]}, "
            f"but {path} was built on {recorded['weights_sha256'][:12]}"
        )
    learner = create_method(manifest["method"], backbone, manifest["config"]).to(device)
    learner.load_learned_state_dict(load_file(str(path / LEARNER_FILE), device=str(device)))
    return learner.eval()
