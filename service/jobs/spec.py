"""The job spec: one typed record of what a job trains, from the route to the job process.

`plan_job` builds it from a validated request, the job store keeps it as JSON, the job's public
view reads it, and the job process runs its `train` request as is, through the same entry point
as ``promptserve train``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from promptserve.training.request import (
    TrainRequest,  # torch-free: the job store imports this module
)

UPLOAD = "upload"  # `JobSpec.data` of a job trained on uploaded images


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    train: TrainRequest  # what the job process runs (its data is a path on the server)
    data: str  # what the client named: UPLOAD or the dataset reference under the data root
    classes: list[str]  # the class names found, sorted
    images: int  # images received (or found in the dataset)
    publish: str = "always"  # "gated" or "always" (service.jobs.gate); older rows: always
    alias: str = "latest"  # the alias the new version takes (when it passes the gate)
    request_id: str | None = None  # of the POST /adapt that made the job (not in its fingerprint)
    traceparent: str | None = None  # W3C trace context of the request that made the job

    def with_data_path(self, path: Path) -> JobSpec:
        return replace(self, train=replace(self.train, data=str(path)))


_ADAPTER = TypeAdapter(JobSpec)


def dump_spec(spec: JobSpec) -> str:
    return _ADAPTER.dump_json(spec).decode()


def load_spec(text: str) -> JobSpec:
    """A stored spec; rows written before the spec was typed (a flat dict) are read too."""
    data: dict[str, Any] = json.loads(text)
    if "train" not in data:
        data = _from_flat(data)
    return _ADAPTER.validate_python(data)


def _from_flat(data: dict[str, Any]) -> dict[str, Any]:
    train = {
        "method": data["method"],
        "data": data.get("data_path", data.get("data", "")),
        "store": data.get("store", "."),
        "name": data["name"],
        "backbone": data["backbone"],
        "shots": data["shots"],
        "seed": data["seed"],
        "epochs": data["epochs"],
        "overrides": data.get("config", {}),
        "preset": data.get("preset"),
        "heldout": True,
    }
    return {
        "train": train,
        "data": data["data"],
        "classes": data["classes"],
        "images": data["images"],
    }
