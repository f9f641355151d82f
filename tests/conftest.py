"""Shared fixtures: tiny random-init backbones only; nothing is downloaded."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: no test may reach a hub
# OMP_NUM_THREADS, when set, picks the kernels' thread count (the tolerances must hold for any)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_backbone():  # type: ignore[no-untyped-def]
    from promptserve.models.backbone import load_backbone

    return load_backbone("tiny")
