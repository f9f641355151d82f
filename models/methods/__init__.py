"""Prompt-learning methods. Each module registers itself; importing them here is the only
registration path, so `list_methods()` is complete as soon as this package is imported."""

from promptserve.models.methods import (  # noqa: F401  (registration)
    coop,
    dcp,
    linear_probe,
    pmpo,
    pre,
    provp,
    sep,
    zeroshot,
)
from promptserve.models.methods.base import Batch, Learner
from promptserve.models.methods.config import MethodConfig, build_config, parse_overrides
from promptserve.models.methods.registry import (
    MethodSpec,
    create_method,
    get_method,
    list_methods,
    make_config,
    method_needs_training,
    register_method,
)

__all__ = [
    "Batch",
    "Learner",
    "MethodConfig",
    "MethodSpec",
    "build_config",
    "create_method",
    "get_method",
    "list_methods",
    "make_config",
    "method_needs_training",
    "parse_overrides",
    "register_method",
]
