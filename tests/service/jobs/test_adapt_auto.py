"""POST /adapt with method=auto: what intake accepts and refuses, and the job run in this
process (its runner's part played by the test) publishing the winner with its leaderboard."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from promptserve.models.artifact import read_manifest
from promptserve.service.jobs.process import run_job
from promptserve.training import auto
from promptserve.training.auto import Candidate
from tests.service.helpers import ClientFactory, b64
from tests.service.jobs.helpers import assert_error, job_launch, post_json, shapes

pytestmark = pytest.mark.anyio

RUNNER = "thishost:111:aaaaaaaa"


def body(per_class: int, **fields: Any) -> dict[str, Any]:
    images = [{"data": b64(data), "label": label} for data, label in shapes("train", per_class)]
    return {"name": "parts", "method": "auto", "images": images} | fields


async def test_an_auto_job_is_queued_with_no_preset(client_factory: ClientFactory) -> None:
    async with client_factory(max_concurrent_jobs=0) as (client, _):
        response = await post_json(client, body(2, auto_budget_s=30))
        assert response.status_code == 202, response.text
        job = response.json()
        assert (job["method"], job["preset"], job["config"]) == ("auto", None, {})


@pytest.mark.parametrize(
    ("fields", "per_class", "words"),
    [
        ({"config": {"lr": 0.1}}, 2, ["no config overrides (lr)"]),
        ({"preset": "mini"}, 2, ["no preset"]),
        ({}, 1, ["at least 2 training images in every class"]),
        ({"shots": 1}, 2, ["at least 2 training images in every class"]),
        ({"auto_budget_s": 0}, 2, ["auto_budget_s"]),
        ({"method": "automatic"}, 2, ["automatic", "coop", "or auto"]),
    ],
)
async def test_auto_refusals(
    client_factory: ClientFactory, fields: dict[str, Any], per_class: int, words: list[str]
) -> None:
    async with client_factory(max_concurrent_jobs=0) as (client, _):
        response = await post_json(client, body(per_class, **fields))
        assert_error(response, 422, "invalid_request", *words)


async def test_an_auto_job_publishes_the_winner_and_records_the_leaderboard(
    client_factory: ClientFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    table = (Candidate("zeroshot", "zeroshot"), Candidate("coop", "coop", {"epochs": 1}))
    monkeypatch.setattr(auto, "CANDIDATES", table)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # run_job sizes its own
    monkeypatch.setattr(torch, "set_num_interop_threads", lambda n: None)
    sigterm = signal.getsignal(signal.SIGTERM)
    async with client_factory(max_concurrent_jobs=0) as (client, runtime):
        response = await post_json(client, body(3, shots=2, publish="always"))
        assert response.status_code == 202, response.text
        job = runtime.jobs.claim_next(RUNNER, 600.0)
        assert job is not None
        try:
            run_job(job_launch(runtime.jobs, job, tmp_path, runner_pid=os.getppid()))
        finally:
            signal.signal(signal.SIGTERM, sigterm)
        done = (await client.get(f"/jobs/{job.id}")).json()
    assert done["state"] == "succeeded", done
    board = done["result"]["auto"]
    assert [entry["label"] for entry in board["candidates"]] == ["zeroshot", "coop"]
    assert board["validation"] == {"folds": 2, "images": 4 * 2, "scheme": "2-fold"}
    winner = next(e for e in board["candidates"] if e["label"] == board["winner"])
    chosen, why = auto.choose(board["candidates"], board["validation"]["images"])
    assert (winner, board["reason"]) == (chosen, why)  # the one-standard-error choice
    manifest = read_manifest(tmp_path / "store" / "parts" / done["result"]["version"])
    assert manifest["training"]["auto"] == board
    assert manifest["method"] == winner["method"]
    assert done["result"]["heldout_images"] == 4  # the third image of each class
