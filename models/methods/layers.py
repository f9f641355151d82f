"""Small building blocks shared by the method modules."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class QuickGELU(nn.Module):
    """``x · sigmoid(1.702 x)``: the GELU approximation of OpenAI's CLIP, used in the MLPs of
    the methods' own attention modules (dcp's CMPA, sep's TFM) as in their releases."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def quick_gelu_mlp(width: int, hidden: int, *, bias: bool = True) -> nn.Sequential:
    """``Linear(width -> hidden) -> QuickGELU -> Linear(hidden -> width)``, the MLP of those
    modules (state-dict keys ``0.*`` and ``2.*``)."""
    return nn.Sequential(
        nn.Linear(width, hidden, bias=bias), QuickGELU(), nn.Linear(hidden, width, bias=bias)
    )
