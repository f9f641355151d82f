"""A run's method config from three layers, and the recipe a report records.

Layers, weakest first: the method config's defaults (the papers' recipes, Dassl's crop, schedule
and batching), what the data calls for (`ImageSource.template` for every method whose text side
holds a fixed template, `ImageSource.recipe` for the synthetic world), the method's own template
for that data set where its release has one (`training.templates`), then a named preset, then
explicit overrides. So ``--dataset OxfordPets`` gives zeroshot "a photo of a {}, a type of pet.",
ProVP "a type of pet, a photo of a {}.", and ``--set template=...`` still wins.

A method whose config has ``classnames`` (learned state per training class: coop's ``csc``, the
linear probe) gets the training data's class names there, always: it is no recipe choice, so
neither a preset nor an override may set it, and `evaluated_with` never replaces it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

from promptserve.models.backbone import parse_backbone_spec
from promptserve.models.errors import ConfigError
from promptserve.models.methods import (
    Learner,
    MethodConfig,
    get_method,
    make_config,
    method_needs_training,
)
from promptserve.models.methods.config import config_fields
from promptserve.training.request import TrainRequest
from promptserve.training.sources import ImageSource
from promptserve.training.templates import method_template

CLASSNAMES_FIELD = "classnames"  # the training classes of a class-specific learner
TEMPLATE_FIELDS = ("template", "templates")  # a fixed prompt (provp, sep, pmpo) / ensemble
RECIPE_FIELDS = (
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "adam_eps",
    "batch_size",
    "epochs",
    "warmup_epochs",
    "warmup_lr",
    "lr_schedule",
    "drop_last",
    "crop_scale",
)


def data_defaults(method: str, source: ImageSource) -> dict[str, Any]:
    """The config values `source` calls for, limited to the fields `method` has."""
    values: dict[str, Any] = dict(source.recipe)
    template = method_template(method, source.dataset, source.template)
    if template is not None:
        values |= {"template": template, "templates": (template,)}
    known = set(config_fields(get_method(method).config_cls))
    return {key: value for key, value in values.items() if key in known}


def default_preset(method: str, backbone: str) -> str | None:
    """The preset a run takes when it names none: the one named after the backbone's
    architecture (`mini` on the `mini` backbone, whose presets hold the recipe tuned for it),
    when the method has one; else None (the config's defaults, the papers' recipe)."""
    arch = parse_backbone_spec(backbone)[0]
    return arch if arch in get_method(method).presets else None


def resolve_config(
    method: str,
    source: ImageSource,
    overrides: dict[str, Any] | None = None,
    preset: str | None = None,
) -> MethodConfig:
    """Defaults < the data's values < `preset` < `overrides`, then the training classes."""
    overrides = dict(overrides or {})
    preset_values = get_method(method).presets.get(preset, {}) if preset is not None else {}
    from_data = {k: v for k, v in data_defaults(method, source).items() if k not in preset_values}
    if CLASSNAMES_FIELD in config_fields(get_method(method).config_cls):
        if CLASSNAMES_FIELD in overrides:
            raise ConfigError(
                f"{CLASSNAMES_FIELD} is taken from the training data's class names; "
                "it cannot be set (restrict the data's classes instead)"
            )
        overrides[CLASSNAMES_FIELD] = tuple(source.class_names)
    return make_config(method, {**from_data, **overrides}, preset=preset)


def config_for(request: TrainRequest, source: ImageSource) -> MethodConfig:
    """The method config a run of `request` on `source` trains with: its overrides and epochs
    (when the method trains at all) over its preset (the backbone's own when it names none)
    over what the data calls for (`resolve_config`). Training and the service's job intake
    both call this, so a job is checked on the config it will train."""
    overrides = dict(request.overrides)
    if request.epochs is not None and method_needs_training(request.method):
        overrides["epochs"] = request.epochs
    preset = request.preset
    if preset is None:
        preset = default_preset(request.method, request.backbone)
    return resolve_config(request.method, source, overrides, preset)


def recipe_of(config: MethodConfig) -> dict[str, Any]:
    """The optimisation recipe of a config, JSON-ready (for reports and summaries)."""
    values = dataclasses.asdict(config)
    recipe = {key: values[key] for key in RECIPE_FIELDS}
    if config.optimizer != "sgd":
        recipe.pop("momentum")
    else:
        recipe.pop("adam_eps")
    recipe["crop_scale"] = list(config.crop_scale)
    return recipe


def template_of(config: MethodConfig) -> str | list[str] | None:
    """The fixed prompt template(s) a config's text side uses, if it has one."""
    values = dataclasses.asdict(config)
    if "template" in values and values.get("use_template", True):
        return str(values["template"])
    if "templates" in values:
        return list(values["templates"])
    return None


@contextlib.contextmanager
def evaluated_with(learner: Learner, source: ImageSource) -> Iterator[None]:
    """Score `learner` on `source` with that data set's own template, as the releases rebuild
    the text side for every target data set; the learned parameters are untouched."""
    fields = data_defaults(learner.method_name, dataclasses.replace(source, recipe={}))
    if not fields:
        yield
        return
    original = learner.config
    learner.config = dataclasses.replace(original, **fields)
    try:
        yield
    finally:
        learner.config = original
