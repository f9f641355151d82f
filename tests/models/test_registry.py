from __future__ import annotations

from dataclasses import dataclass

import pytest

from promptserve.models.errors import ConfigError, DuplicateMethodError, UnknownMethodError
from promptserve.models.methods import (
    create_method,
    get_method,
    list_methods,
    make_config,
    register_method,
)
from promptserve.models.methods.base import Learner
from promptserve.models.methods.config import MethodConfig, parse_overrides
from promptserve.models.methods.registry import method_needs_training, unregister_method
from tests.helpers import create_learner


def test_core_methods_are_registered() -> None:
    assert {"zeroshot", "coop"} <= set(list_methods())
    assert list_methods() == sorted(list_methods())


def test_unknown_method_lists_the_valid_names() -> None:
    with pytest.raises(UnknownMethodError) as err:
        get_method("nope")
    assert "nope" in str(err.value)
    for name in list_methods():
        assert name in str(err.value)


def test_duplicate_registration_raises() -> None:
    @dataclass(frozen=True, kw_only=True)
    class DummyConfig(MethodConfig):
        pass

    with pytest.raises(DuplicateMethodError):
        register_method("coop", DummyConfig)(Learner)


def test_registering_a_new_method_makes_it_creatable(tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    @dataclass(frozen=True, kw_only=True)
    class EchoConfig(MethodConfig):
        width: int = 3

    try:

        @register_method("echo-test", EchoConfig)
        class EchoLearner(Learner):
            pass

        assert "echo-test" in list_methods()
        learner = create_method("echo-test", tiny_backbone, {"width": 5})
        assert isinstance(learner, EchoLearner)
        assert learner.config.width == 5
    finally:
        unregister_method("echo-test")
    assert "echo-test" not in list_methods()


def test_the_registry_knows_which_methods_need_training(tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    assert not method_needs_training("zeroshot")
    for name in list_methods():  # the fact matches what a fresh learner has to train
        has_parameters = bool(create_learner(name, tiny_backbone).trainable_parameters())
        assert method_needs_training(name) == has_parameters, name
    with pytest.raises(UnknownMethodError, match="registered methods"):
        method_needs_training("nope")

    @dataclass(frozen=True, kw_only=True)
    class FixedConfig(MethodConfig):
        pass

    try:

        @register_method("fixed-test", FixedConfig, trainable=False)
        class FixedLearner(Learner):
            pass

        assert not method_needs_training("fixed-test")
        assert get_method("fixed-test").learner_cls is FixedLearner
    finally:
        unregister_method("fixed-test")


def test_config_overrides_are_validated() -> None:
    config = make_config("coop", {"n_ctx": 8, "lr": 0.01})
    assert (config.n_ctx, config.lr) == (8, 0.01)  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="valid fields"):
        make_config("coop", {"n_context": 8})
    with pytest.raises(ConfigError, match="n_ctx"):
        make_config("coop", {"n_ctx": "many"})
    with pytest.raises(ConfigError):
        make_config("coop", {"optimizer": "rmsprop"})


def test_parse_overrides_reads_json_and_strings() -> None:
    parsed = parse_overrides(["lr=0.1", "ctx_init=a photo of a", 'templates=["a {}."]', "x=null"])
    assert parsed == {"lr": 0.1, "ctx_init": "a photo of a", "templates": ["a {}."], "x": None}
    with pytest.raises(ConfigError):
        parse_overrides(["lr"])


def test_tuple_fields_accept_lists() -> None:
    config = make_config("zeroshot", {"templates": ["a {}.", "an image of {}."]})
    assert config.templates == ("a {}.", "an image of {}.")  # type: ignore[attr-defined]
