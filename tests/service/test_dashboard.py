"""deploy/grafana/promptserve.json is a Grafana dashboard whose every query names only series
a real app's /metrics exports (the GPU families with torch.cuda faked: CI has no GPU)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from promptserve.service.gpu_metrics import add_gpu_metrics
from promptserve.service.metrics import Metrics
from tests.service.helpers import ClientFactory

pytestmark = pytest.mark.anyio

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/promptserve.json"
# what PromQL spells that is not a series: functions, aggregations, their keywords
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "topk", "by", "without", "rate", "increase",
    "histogram_quantile", "irate", "and", "or", "unless", "on", "ignoring",
}  # fmt: skip
SUFFIXES = {"_bucket": "histogram", "_sum": "histogram", "_count": "histogram", "_total": "counter"}


def query_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (label matchers, ranges, strings, the label
    lists of by / without / on / ignoring and Grafana's $variables taken out first)."""
    bare = re.sub(r'"[^"]*"|\{[^}]*\}|\[[^\]]*\]|\$\w+', " ", expr)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare))
    return {w for w in words - PROMQL_WORDS if not re.fullmatch(r"\d.*", w)}


def exported(text: str) -> dict[str, str]:
    """Family name -> type, as prometheus_client's parser reads them (counters without
    `_total`, histograms without `_bucket`/`_sum`/`_count`)."""
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def exports(families: dict[str, str], name: str) -> bool:
    """Whether a query's `name` is a series of `families`: a family's own name (a gauge), or
    its name plus the suffix its type gives its samples."""
    if families.get(name) in ("gauge", "untyped", "info"):
        return True
    for suffix, kind in SUFFIXES.items():
        if name.endswith(suffix) and families.get(name.removesuffix(suffix)) == kind:
            return True
    return False


def targets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (panel["title"], target)
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "promptserve"
    assert dashboard["title"]
    assert dashboard["schemaVersion"] >= 36
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel["targets"], panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
    for title, target in targets(dashboard):
        assert target["datasource"]["uid"] == "${datasource}", title
        assert target["expr"], title
        assert target["refId"], title
    titles = " ".join(p["title"] for p in panels).lower()
    for topic in ("requests", "latency", "errors", "batch", "engine", "rejected", "classifier",
                  "jobs", "job duration", "memory", "gpu"):  # fmt: skip
        assert topic in titles, topic


def test_query_names_strips_everything_but_series() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, route) (rate(promptserve_x_bucket{status=~"5.."}'
        "[$__rate_interval]))) / on (route) promptserve_y"
    )
    assert query_names(expr) == {"promptserve_x_bucket", "promptserve_y"}
    families = {"promptserve_x": "histogram", "promptserve_c": "counter", "promptserve_g": "gauge"}
    assert exports(families, "promptserve_x_bucket")
    assert exports(families, "promptserve_c_total")
    assert exports(families, "promptserve_g")
    assert not exports(families, "promptserve_c")  # a counter is read as name_total
    assert not exports(families, "promptserve_g_total")
    assert not exports(families, "promptserve_x")


async def test_every_query_names_a_series_the_service_exports(
    client_factory: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with client_factory() as (client, _):
        families = exported((await client.get("/metrics")).text)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda i: 1)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda i: 1)
    monkeypatch.setattr(torch.cuda, "utilization", lambda i: 1)
    on_cuda = Metrics()
    add_gpu_metrics(on_cuda, "cuda")
    families |= {k: v for k, v in exported(on_cuda.expose()).items() if "gpu" in k}
    dashboard = json.loads(DASHBOARD.read_text())
    named = {(title, name) for title, t in targets(dashboard) for name in query_names(t["expr"])}
    assert {name for _, name in named} >= {"promptserve_gpu_utilization_ratio"}
    unknown = sorted((title, name) for title, name in named if not exports(families, name))
    assert not unknown, unknown
