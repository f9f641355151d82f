"""The method registry: names -> (config class, learner class). Fails loudly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from promptserve.models.backbone import Backbone
from promptserve.models.errors import ConfigError, DuplicateMethodError, UnknownMethodError
from promptserve.models.methods.base import Learner
from promptserve.models.methods.config import MethodConfig, build_config

L = TypeVar("L", bound=type[Learner])


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type[MethodConfig]
    learner_cls: type[Learner]
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)  # named config overrides
    trainable: bool = True  # False: nothing to learn (zeroshot), so no shots are sampled


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    config_cls: type[MethodConfig],
    presets: dict[str, dict[str, Any]] | None = None,
    *,
    trainable: bool = True,
) -> Callable[[L], L]:
    """Class decorator: ``@register_method("coop", CoOpConfig)``; ``trainable=False`` for a
    method with nothing to learn."""

    def decorate(learner_cls: L) -> L:
        if name in _REGISTRY:
            raise DuplicateMethodError(f"method {name!r} is already registered")
        _check_frozen_visual(name, learner_cls)
        _REGISTRY[name] = MethodSpec(
            name, config_cls, learner_cls, dict(presets or {}), trainable=trainable
        )
        learner_cls.method_name = name
        return learner_cls

    return decorate


def _check_frozen_visual(name: str, learner_cls: type[Learner]) -> None:
    """A method that claims a frozen visual side must keep the base image path and loss, which
    the cached-feature training path replaces by `Learner.loss_from_embeddings`."""
    if not learner_cls.frozen_visual:
        return
    changed = [
        attr
        for attr in ("encode_images", "loss", "visual_graph", "shared_visual")
        if getattr(learner_cls, attr) is not getattr(Learner, attr)
    ]
    if changed:
        raise ConfigError(
            f"method {name!r} declares frozen_visual but overrides {', '.join(changed)}: "
            "its image path or loss would differ between cached and uncached training"
        )


def unregister_method(name: str) -> None:
    """Remove a method (tests register throw-away methods)."""
    _REGISTRY.pop(name, None)


def list_methods() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str) -> MethodSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownMethodError(
            f"unknown method {name!r}; registered methods: {', '.join(list_methods())}"
        ) from None


def method_needs_training(name: str) -> bool:
    """Whether method `name` learns anything (False for zeroshot); unknown names raise."""
    return get_method(name).trainable


def make_config(
    name: str, overrides: dict[str, Any] | None = None, preset: str | None = None
) -> MethodConfig:
    """A method's config: defaults, then a named preset, then explicit overrides."""
    spec = get_method(name)
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in spec.presets:
            raise UnknownMethodError(
                f"method {name!r} has no preset {preset!r}; presets: {', '.join(spec.presets)}"
            )
        values.update(spec.presets[preset])
    values.update(overrides or {})
    return build_config(spec.config_cls, values)


def create_method(
    name: str, backbone: Backbone, config: MethodConfig | dict[str, Any] | None = None
) -> Learner:
    """A fresh learner of method `name` on `backbone`."""
    spec = get_method(name)
    if not isinstance(config, MethodConfig):
        config = build_config(spec.config_cls, config)
    elif not isinstance(config, spec.config_cls):
        raise ConfigError(f"{name} needs a {spec.config_cls.__name__}, got {type(config).__name__}")
    return spec.learner_cls(backbone, config)
