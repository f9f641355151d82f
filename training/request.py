"""What a training run is asked to do: `TrainRequest`, the spec of a `promptserve train` run
and of a service job alike.

This module imports neither torch nor the model code, so the job store and a job worker can
read and write requests before they pay for those imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_BACKBONE = "mini"  # models.backbone.DEFAULT_BACKBONE; equal by a test
AUTO_BUDGET_S = 900.0  # method=auto: no candidate starts after this many seconds (training.auto)


@dataclass(frozen=True, kw_only=True)
class TrainRequest:
    method: str
    data: str  # dataset spec (folder, manifest, split root, synthetic:...)
    store: Path
    name: str
    backbone: str = DEFAULT_BACKBONE
    shots: int | None = 16  # images per class; None uses every training image
    seed: int = 1
    epochs: int | None = None  # None keeps the method config's epochs
    overrides: dict[str, Any] = field(default_factory=dict)  # method config fields
    preset: str | None = None  # a named method preset, applied before overrides
    device: str = "cpu"
    # score the images left out by the few-shot sample (tuned and zero-shot); needs `shots`
    heldout: bool = False
    within: str | None = None  # every file of `data` must lie under this folder (see open_within)
    workers: int = 0  # data-loader processes (decoding full-size images is the GPU bottleneck)
    auto_budget_s: float = AUTO_BUDGET_S  # method=auto: seconds after which no candidate starts
