"""linear_probe: a linear classifier on the frozen, normalised image features (the "Linear probe
CLIP" baseline of Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022, arXiv
2109.01134; Radford et al., ICML 2021, section 3.2).

Learnable: one weight row per training class, ``W`` [C, D]. The class embedding of a training
class is ``norm(W_c)``, so the artifact scores it like every other method, ``s * norm(image) @
norm(W_c)^T``, and serves on the backbone's plain shared graph. `prepare_training` sets each row
to its class's mean frozen image feature (a nearest-class-mean classifier before the first step),
falling back to the zero-shot template embedding for a class with no image; training minimises the
base cross-entropy. A name outside the training classes (an open-vocabulary label, a novel class)
has no row and takes its zero-shot template embedding.

Deliberate differences from the paper's baseline, which fits scikit-learn's L-BFGS logistic
regression with a bias and searches its regularisation C on validation data: here the classifier
is a cosine one with no bias and the backbone's fixed logit scale (the artifact format holds a
[C, D] matrix and nothing else), trained by the shared loop's optimiser and schedule from the
class-mean initialisation; the recipe is chosen once per backbone (the presets), not per data set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promptserve.models.backbone import Backbone
from promptserve.models.methods.base import Learner
from promptserve.models.methods.class_specific import class_index, class_mean_features, gather_rows
from promptserve.models.methods.config import MINI_RECIPE, MethodConfig
from promptserve.models.methods.registry import register_method
from promptserve.models.methods.zeroshot import check_templates


@dataclass(frozen=True, kw_only=True)
class LinearProbeConfig(MethodConfig):
    classnames: tuple[str, ...] = ()  # the training classes, in label order; filled by training
    templates: tuple[str, ...] = ("a photo of a {}.",)  # zero-shot fallback for other names
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = 0.001
    weight_decay: float = 0.0  # a cosine classifier: decay would only rescale the rows
    warmup_epochs: int = 0  # the class-mean start needs no warm-up
    epochs: int = 50


@register_method(
    "linear_probe",
    LinearProbeConfig,
    presets={
        # mini on CPU: Adam at 0.001 for 20 epochs of batch 16 from the class means, on one
        # cached view per image (the paper's probe sees no augmentation either). Validation split
        # of synthetic:color-shape?names=catalogue&classes=16, 16 shots, seed 1: 94.5 against
        # zero-shot 0.8; all 64 classes: 83.6 against 1.4 (bench/class_specific.py)
        "mini": {**MINI_RECIPE, "lr": 0.001, "epochs": 20, "batch_size": 16, "feature_views": 1},
    },
)
class LinearProbeLearner(Learner):
    config: LinearProbeConfig
    frozen_visual = True  # the plain tower: training may use cached features

    def __init__(self, backbone: Backbone, config: LinearProbeConfig) -> None:
        super().__init__(backbone, config)
        self.class_index = class_index(config.classnames, "linear_probe")
        check_templates(config.templates)
        self.weight = nn.Parameter(self.template_embeddings(list(config.classnames)))  # [C, D]

    def template_embeddings(self, names: list[str]) -> Tensor:
        """[N] names -> [N, D] their zero-shot embeddings (no gradient: nothing learned)."""
        with torch.no_grad():
            return self.text.encode_templates(names, self.config.templates).float()

    def encode_classes(self, names: list[str]) -> Tensor:
        rows = F.normalize(self.weight, dim=-1)  # [C, D]
        return gather_rows(rows, names, self.class_index, self.template_embeddings)

    def prepare_training(
        self, class_names: list[str], batches: Iterable[tuple[Tensor, Tensor]] | None
    ) -> None:
        """Set the rows of the training classes in `class_names` (the label set the batches'
        labels index) to their mean frozen image features; other rows keep their values."""
        start = self.template_embeddings(class_names).to(self.weight.device)  # [C', D]
        means = class_mean_features(self.vision, start, batches)
        with torch.no_grad():
            for label, name in enumerate(class_names):
                if name in self.class_index:
                    self.weight[self.class_index[name]] = means[label]
