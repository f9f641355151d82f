"""zeroshot: CLIP's hand-crafted prompts (Radford et al., ICML 2021), the baseline for all.

Class embedding: ``norm(mean_j norm(Text(template_j(name))))``; images use the plain tower.
Nothing is learned, so "training" only encodes the classes.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from promptserve.models.backbone import Backbone
from promptserve.models.errors import ConfigError
from promptserve.models.methods.base import Learner
from promptserve.models.methods.config import MethodConfig
from promptserve.models.methods.registry import register_method


def check_templates(templates: tuple[str, ...]) -> None:
    """ConfigError unless there is a template and each has a '{}' for the class name."""
    if not templates or any("{}" not in t for t in templates):
        raise ConfigError("every zeroshot template needs a '{}' for the class name")


@dataclass(frozen=True, kw_only=True)
class ZeroShotConfig(MethodConfig):
    templates: tuple[str, ...] = ("a photo of a {}.",)  # one template, or an ensemble
    epochs: int = 0  # nothing to train


@register_method("zeroshot", ZeroShotConfig, trainable=False)
class ZeroShotLearner(Learner):
    config: ZeroShotConfig
    frozen_visual = True  # the plain tower: training may use cached features

    def __init__(self, backbone: Backbone, config: ZeroShotConfig) -> None:
        super().__init__(backbone, config)
        check_templates(config.templates)

    def encode_classes(self, names: list[str]) -> Tensor:
        return self.text.encode_templates(names, self.config.templates)
