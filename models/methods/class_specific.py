"""Learned state kept per training class: coop's class-specific context (``csc``) and the linear
probe's class weights.

Such a learner must know its training classes when it is built, so an artifact reloads from its
manifest alone: they are the config field ``classnames``, filled from the training data by
`training.recipe.resolve_config`. A name outside them (an open-vocabulary label, a novel class)
has no row of its own and takes the method's fallback (coop-CSC: the mean of its class contexts;
the linear probe: the zero-shot template embedding).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from promptserve.models.errors import ConfigError
from promptserve.models.prompting import PromptedVisionEncoder


def class_index(classnames: tuple[str, ...], what: str) -> dict[str, int]:
    """{name: row} for the training classes; ConfigError when there are none or one repeats."""
    if not classnames:
        raise ConfigError(
            f"{what} learns one row per training class, so its config needs `classnames` "
            "(training fills it from the data's class names; set it when building one directly)"
        )
    repeated = sorted({name for name in classnames if classnames.count(name) > 1})
    if repeated:
        raise ConfigError(f"classnames must be distinct; repeated: {', '.join(repeated)}")
    return {name: row for row, name in enumerate(classnames)}


def gather_rows(
    table: Tensor,
    names: list[str],
    index: dict[str, int],
    fallback: Callable[[list[str]], Tensor],
) -> Tensor:
    """[C, ...] rows of the training classes -> [N, ...] rows for `names`: a training class
    gets its own row, any other name ``fallback([names])`` (computed for those names only, so a
    name's row never depends on the others asked with it)."""
    unknown = list(dict.fromkeys(name for name in names if name not in index))
    rows = table
    if unknown:
        rows = torch.cat([table, fallback(unknown).to(table.dtype)])  # [C + U, ...]
    extra = {name: len(table) + i for i, name in enumerate(unknown)}
    order = [index[name] if name in index else extra[name] for name in names]
    return rows[torch.tensor(order, dtype=torch.long, device=table.device)]


def class_mean_features(
    vision: PromptedVisionEncoder,
    fallback: Tensor,
    batches: Iterable[tuple[Tensor, Tensor]] | None,
) -> Tensor:
    """[C, D] normalised: each class's mean normalised frozen image feature over `batches`
    ((pixels [B, 3, S, S], label [B]) with labels indexing the rows), or the class's `fallback`
    row [C, D] when it has no image."""
    with torch.no_grad():
        sums = torch.zeros_like(fallback)
        counts = fallback.new_zeros(len(fallback), 1)  # [C, 1] images per class
        for pixels, labels in batches or ():
            labels = labels.to(fallback.device)
            frozen = F.normalize(vision(pixels.to(fallback.device)), dim=-1)  # [B, D]
            sums.index_add_(0, labels, frozen.to(sums.dtype))
            counts.index_add_(0, labels, counts.new_ones(len(labels), 1))
        return F.normalize(torch.where(counts > 0, sums / counts.clamp(min=1), fallback), dim=-1)
