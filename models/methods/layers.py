"""Small building blocks shared by the method modules."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class QuickGELU(nn.Module):
    """``x · sigmoid(1.702 x)``: the GELU approximation of OpenAI's CLIP, used in the MLPs of
    the methods' own attention modules (dcp's CMPA, sep's TFM) as in their releases."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)
