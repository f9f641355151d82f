"""The service with PROMPTSERVE_ENGINE_PRECISION=int8 on the mini store: the default classifier
is served by the int8 engine once its gate passed, and /metrics shows the gate."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptserve.models.graphs import GraphRef
from tests.service.helpers import make_settings, png_bytes, serve

pytestmark = pytest.mark.anyio


async def test_an_int8_service_serves_after_the_gate_and_shows_it(mini_store: Path) -> None:
    settings = make_settings(mini_store, engine_precision="int8", precision_gate_images=16)
    async with serve(settings) as (client, runtime):
        files = [("images", ("a.png", png_bytes(), "image/png"))]
        response = await client.post("/classify", files=files)
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0][0]["label"]
        assert runtime.local is not None
        classifier = runtime.local.cache.get("default")
        gate = classifier.precision_gate
        assert gate is not None
        assert gate.served == "int8"
        assert gate.images == 16
        ref = GraphRef.from_json(classifier.manifest["graph"])
        assert classifier.engine is runtime.local.cache.engines.get(mini_store, ref, "int8")
        metrics = (await client.get("/metrics")).text
    assert 'promptserve_precision_gate_total{outcome="passed",precision="int8"} 1.0' in metrics
    assert 'promptserve_precision_gate_agreement{classifier="default"' in metrics
