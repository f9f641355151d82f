"""The naive peer that `bench/vs_naive.py` measures promptserve against serves the same
weights and classes as promptserve's default classifier, and answers the same request."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.slow  # the session's mini template store: a first server start

REPO = Path(__file__).resolve().parents[1]


def test_the_peer_classifies_with_the_default_classifiers_weights_and_classes(
    mini_template_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from promptserve.models.backbone import load_backbone
    from promptserve.training.synthetic.world import render, sample_scene

    monkeypatch.syspath_prepend(str(REPO / "bench"))
    from naive_peer import build_app, newest_default

    classes = newest_default(mini_template_store)["class_names"]
    scene = sample_scene(
        np.random.default_rng(0), shape="star", colour="red", style="filled", background="plain"
    )
    png = io.BytesIO()
    render(scene).save(png, format="PNG")
    with TestClient(build_app(mini_template_store)) as client:
        assert client.get("/health/ready").status_code == 200
        files = [("images", ("star", png.getvalue(), "application/octet-stream"))] * 2
        answer = client.post("/classify", files=files, data={"top_k": "3"})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert len(results) == 2
    assert results[0] == results[1]
    labels = results[0]["labels"]
    assert [entry["label"] for entry in labels][0] == "red star"
    assert len(labels) == 3
    assert all(entry["label"] in classes for entry in labels)
    scores = [entry["score"] for entry in labels]
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) <= 1 + 1e-6
    # the spec the peer loads resolves to the weights the default classifier was built on
    backbone = newest_default(mini_template_store)["backbone"]
    assert load_backbone(backbone["spec"]).id.weights_sha256 == backbone["weights_sha256"]
