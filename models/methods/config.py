"""The recipe fields every method config shares, and validation of user overrides."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import TypeAdapter, ValidationError

from promptserve.models.errors import ConfigError

C = TypeVar("C", bound="MethodConfig")


# The optimisation recipe of every `mini` preset, which those presets were tuned with: a gentler
# crop for the 64-pixel shapes world, the per-step cosine, and the last partial batch kept
# (few shots give few batches). A preset wins over the data's defaults, so a `mini` run trains
# the same on `synthetic:` specs, `make-dataset` roots, uploads and any other data.
MINI_RECIPE: dict[str, object] = {
    "crop_scale": (0.5, 1.0),
    "lr_schedule": "step",
    "drop_last": False,
}


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """Optimisation recipe; each method's config extends it with the paper's defaults."""

    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.002  # peak learning rate after warm-up
    momentum: float = 0.9  # SGD only
    weight_decay: float = 5e-4
    adam_eps: float = 1e-8  # Adam/AdamW only
    batch_size: int = 32
    epochs: int = 50
    warmup_epochs: int = 1  # epochs at the constant `warmup_lr` before the cosine schedule
    warmup_lr: float = 1e-5  # CoOp lineage: a constant low rate, not a linear ramp
    # Dassl's cosine steps once per epoch (epoch e >= warmup trains at
    # lr/2 * (1 + cos(pi * (e - warmup) / epochs))); "step" decays every step down to 0
    lr_schedule: Literal["epoch", "step"] = "epoch"
    drop_last: bool = True  # drop the last partial training batch (when there is a full one)
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range (Dassl's)
    # methods with a frozen visual side (coop, pre): augmented views per training image encoded
    # once and trained on from a cache, at most one per epoch; 0 (the default) encodes a fresh
    # view in every epoch, as the papers do. Off by default: 8 views cost coop 2.5 points of
    # harmonic mean on the quick suite (docs/performance.md). Other methods ignore it.
    feature_views: int = 0


def config_fields(config_cls: type[MethodConfig]) -> list[str]:
    return [f.name for f in dataclasses.fields(config_cls)]


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """``["lr=0.01", "ctx_init=a photo of a"]`` -> {"lr": 0.01, "ctx_init": "a photo of a"}.

    Values are read as JSON when they parse (numbers, lists, null, true), else as strings.
    """
    overrides: dict[str, Any] = {}
    for item in assignments:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--set expects field=value, got {item!r}")
        try:
            overrides[name.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[name.strip()] = raw
    return overrides


def build_config(config_cls: type[C], overrides: dict[str, Any] | None = None) -> C:
    """The config class's defaults with `overrides` applied, type-checked by pydantic."""
    overrides = dict(overrides or {})
    known = config_fields(config_cls)
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown field(s) {', '.join(unknown)} for {config_cls.__name__}; "
            f"valid fields: {', '.join(known)}"
        )
    values = {**dataclasses.asdict(config_cls()), **overrides}
    try:
        return TypeAdapter(config_cls).validate_python(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid {config_cls.__name__}: {problems}") from exc
