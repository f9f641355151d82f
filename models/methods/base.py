"""The learner interface every method implements, and what the loop and exporter rely on."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promptserve.models.backbone import Backbone, BackboneId, PreprocessConfig
from promptserve.models.errors import ArtifactError
from promptserve.models.methods.config import MethodConfig
from promptserve.models.prompting import PromptedTextEncoder, PromptedVisionEncoder, VisionPrompts
from promptserve.models.towers import Tokenizer


@dataclass(frozen=True)
class SharedVisual:
    """A method's visual path as one graph shared by every classifier of the method (on one
    backbone, with one prompt shape), which takes the classifier's own tensors as inputs.

    ``graph(pixels [B, 3, S, S], *inputs [B, ...]) -> [B, D]`` normalised embeddings; each image
    brings its own classifier's tensors, so images of different classifiers batch together.
    """

    graph: nn.Module
    inputs: dict[str, Tensor]  # this classifier's tensors, without the batch axis, in order
    structure: dict[str, Any]  # what else fixes the graph (config fields), part of its id


@dataclass(frozen=True)
class Batch:
    """One training step's input."""

    pixels: Tensor  # [B, 3, S, S], already normalised
    labels: Tensor  # [B] indices into class_names
    class_names: list[str]  # the label set the labels index


class Learner(nn.Module):
    """A prompt-learning method on a frozen backbone.

    Subclasses override `encode_classes`, `encode_images` and, if the method adds terms,
    `loss`. The backbone is frozen by construction: its towers are wrapped here with
    `requires_grad_(False)`, so the learner's trainable parameters are exactly the method's.
    """

    method_name: ClassVar[str] = ""
    # True when the image path depends on no learned parameter (the plain frozen tower and the
    # base loss): training may then encode each image once per augmented view and train on the
    # cached embeddings (`training.features`); the registry checks the claim
    frozen_visual: ClassVar[bool] = False

    def __init__(self, backbone: Backbone, config: MethodConfig) -> None:
        super().__init__()
        backbone.model.requires_grad_(False)
        self.config = config
        self.backbone_id: BackboneId = backbone.id
        self.preprocess: PreprocessConfig = backbone.preprocess
        self.logit_scale: float = backbone.logit_scale
        self.text = PromptedTextEncoder(backbone.text_tower())
        self.vision = PromptedVisionEncoder(backbone.vision_tower())

    @property
    def tokenizer(self) -> Tokenizer:
        """The backbone's tokenizer; the text tower owns it (see `PromptedTextEncoder.tokenize`)."""
        return self.text.tower.tokenizer

    # --- what every method provides -------------------------------------------------------

    def encode_classes(self, names: list[str]) -> Tensor:
        """[C] class names -> [C, D] L2-normalised class embeddings (image-independent)."""
        raise NotImplementedError

    def encode_images(self, pixels: Tensor) -> Tensor:
        """[B, 3, S, S] -> [B, D] L2-normalised image embeddings (batch-independent)."""
        return F.normalize(self.vision(pixels), dim=-1)

    def logits(self, image_embeds: Tensor, class_embeds: Tensor) -> Tensor:
        return self.logit_scale * image_embeds @ class_embeds.t()

    def loss(self, batch: Batch) -> Tensor:
        """Cross-entropy on ``s * cos``; methods with regularisers extend it."""
        return self.loss_from_embeddings(
            self.encode_images(batch.pixels), batch.labels, batch.class_names
        )

    def loss_from_embeddings(
        self, image_embeds: Tensor, labels: Tensor, class_names: list[str]
    ) -> Tensor:
        """The base loss from image embeddings [B, D] already encoded: what a `frozen_visual`
        method trains on when its embeddings come from the feature cache."""
        logits = self.logits(image_embeds, self.encode_classes(class_names))
        return F.cross_entropy(logits, labels)

    def prepare_training(
        self, class_names: list[str], batches: Iterable[tuple[Tensor, Tensor]] | None
    ) -> None:
        """Called once before the first step with the training data as (pixels [B, 3, S, S],
        label index [B]) batches, so a method may initialise heads from it (SEP does)."""

    def visual_graph(self) -> nn.Module:
        """The module exported as ``visual.onnx``: pixels -> normalised image embeddings.

        Methods whose visual prompts are fixed after training may fold them into constants here.
        """
        return VisualGraph(self)

    def shared_visual(self) -> SharedVisual | None:
        """The method's visual path as a graph over its own tensors (see `SharedVisual`), or
        None when its graph bakes them in (the plain tower is shared without inputs)."""
        return None

    def train(self, mode: bool = True) -> Learner:
        """Train the method's own modules; the frozen towers stay in eval mode."""
        super().train(mode)
        self.text.eval()
        self.vision.eval()
        return self

    # --- state ----------------------------------------------------------------------------

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def learned_state_dict(self) -> dict[str, Tensor]:
        """The method's own parameters and persistent buffers, without the frozen backbone."""
        frozen = {id(t) for t in self.text.state_dict(keep_vars=True).values()}
        frozen |= {id(t) for t in self.vision.state_dict(keep_vars=True).values()}
        return {
            name: tensor.detach()
            for name, tensor in self.state_dict(keep_vars=True).items()
            if id(tensor) not in frozen
        }

    def load_learned_state_dict(self, state: dict[str, Tensor]) -> None:
        """Strict: every learned tensor must be present, with the same shape, and nothing else."""
        own = self.learned_state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ArtifactError(
                f"learner weights do not match {type(self).__name__}: "
                f"missing {missing}, unexpected {unexpected}"
            )
        for name, tensor in state.items():
            if tensor.shape != own[name].shape:
                raise ArtifactError(
                    f"{name}: stored shape {tuple(tensor.shape)} != {tuple(own[name].shape)}"
                )
        self.load_state_dict(state, strict=False)

    def describe(self) -> dict[str, Any]:
        """Counts for reports: learnable parameters and tokens per image."""
        return {"learnable_parameters": sum(p.numel() for p in self.trainable_parameters())}

    @property
    def device(self) -> torch.device:
        return self.text.tower.positional_embedding.device


class VisualGraph(nn.Module):
    """pixels [B, 3, S, S] -> normalised embeddings [B, D]; what the artifact exports."""

    def __init__(self, learner: Learner) -> None:
        super().__init__()
        self.learner = learner

    def forward(self, pixels: Tensor) -> Tensor:
        return self.learner.encode_images(pixels)


class FoldedVisualGraph(nn.Module):
    """The exported visual path of a method whose visual prompts are a function of one
    input-independent tensor (dcp's CMPA queries, pmpo's projected prompts).

    That tensor is computed once and held as the constant buffer `folded`, so the graph holds
    neither the text tower nor whatever produced it. `prompts(folded, **parts)` builds the
    `VisionPrompts` on each call; `parts` are the modules and parameters it reads, registered
    here under their own names so that tracing and export see them as this graph's own.
    """

    folded: Tensor

    def __init__(
        self,
        vision: PromptedVisionEncoder,
        folded: Tensor,
        prompts: Callable[..., VisionPrompts | None],
        **parts: nn.Module | nn.Parameter,
    ) -> None:
        super().__init__()
        self.vision = vision
        self.prompts = prompts
        self.part_names = tuple(parts)
        for name, part in parts.items():
            if isinstance(part, nn.Parameter):
                self.register_parameter(name, part)
            else:
                self.add_module(name, part)
        with torch.no_grad():
            self.register_buffer("folded", folded.detach().clone())

    def forward(self, pixels: Tensor) -> Tensor:
        parts = {name: getattr(self, name) for name in self.part_names}
        return F.normalize(self.vision(pixels, self.prompts(self.folded, **parts)), dim=-1)
