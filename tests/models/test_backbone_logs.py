"""Loading a backbone logs only what is true."""

from __future__ import annotations

import logging

import pytest

from promptserve.models.backbone import load_backbone

RANDOM_INIT = "No pretrained weights loaded"


def test_loading_mini_does_not_claim_random_weights(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        load_backbone("mini")
    assert not [r for r in caplog.records if RANDOM_INIT in r.getMessage()], caplog.text


def test_a_random_init_backbone_still_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        load_backbone("tiny")
    assert RANDOM_INIT in caplog.text
    assert not logging.getLogger().filters  # the filter does not outlive the load
