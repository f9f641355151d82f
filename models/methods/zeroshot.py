"""zeroshot: CLIP's hand-crafted prompts (Radford et al., ICML 2021), the baseline for all.

Class embedding: ``norm(mean_j norm(Text(template_j(name))))``; images use the plain tower.
Nothing is learned, so "training" only encodes the classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from models.errors import ConfigError
from models.methods.base import Learner
from models.methods.config import MethodConfig
from models.methods.registry import register_method


@dataclass(frozen=True, kw_only=True)
class ZeroShotConfig(MethodConfig):
    templates: tuple[str, ...] = ("a photo of a {}.",)  # one template, or an ensemble
    epochs: int = 0  # nothing to train


def encode_templates(learner: Learner, names: list[str], templates: tuple[str, ...]) -> Tensor:
    """[C] names -> [C, D]: the normalised mean of normalised template features."""
    feats = []
    for template in templates:
        ids = learner.text.tokenize([template.format(n) for n in names], learner.tokenizer)
        feats.append(F.normalize(learner.text.encode_ids(ids), dim=-1))  # [C, D]
    return F.normalize(torch.stack(feats).mean(dim=0), dim=-1)


@register_method("zeroshot", ZeroShotConfig)
class ZeroShotLearner(Learner):
    config: ZeroShotConfig

    def __init__(self, backbone, config: ZeroShotConfig) -> None:  # type: ignore[no-untyped-def]
        super().__init__(backbone, config)
        if not config.templates or any("{}" not in t for t in config.templates):
            raise ConfigError("every zeroshot template needs a '{}' for the class name")

    def encode_classes(self, names: list[str]) -> Tensor:
        return encode_templates(self, names, self.config.templates)
