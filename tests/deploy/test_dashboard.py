"""The Grafana dashboard's structure: what Grafana needs to lay it out and wire its queries, and what the issue
asks it to show. Its PromQL runs against a real Prometheus in test_prometheus.py.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from tests.conftest import REPO_ROOT
from tests.deploy.conftest import DASHBOARD

DASHBOARD_JSON: dict[str, Any] = json.loads(DASHBOARD.read_text())
PANELS = DASHBOARD_JSON["panels"]
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range"}


def _queries(panel: dict[str, Any]) -> list[str]:
    return [target["expr"] for target in panel.get("targets", [])]


def test_panels_are_uniquely_identified_and_laid_out_without_overlap() -> None:
    ids = [panel["id"] for panel in PANELS]
    assert len(ids) == len(set(ids))
    boxes = []
    for panel in PANELS:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        boxes.append((grid["x"], grid["y"], grid["x"] + grid["w"], grid["y"] + grid["h"], panel["title"]))
    for a, b in itertools.combinations(boxes, 2):
        overlap = a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
        assert not overlap, f"{a[4]!r} overlaps {b[4]!r}"


def test_every_query_uses_the_datasource_variable_and_defined_variables() -> None:
    defined = {variable["name"] for variable in DASHBOARD_JSON["templating"]["list"]}
    assert {"datasource", "namespace", "job", "model", "version"} <= defined
    for panel in (p for p in PANELS if p["type"] != "row"):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["description"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        for query in _queries(panel):
            used = set(re.findall(r"\$(\w+)", query))
            assert used <= defined | GRAFANA_BUILTINS, (panel["title"], used - defined)


def test_heatmaps_read_histogram_buckets_as_heatmaps() -> None:
    heatmaps = [p for p in PANELS if p["type"] == "heatmap"]
    assert {p["title"] for p in heatmaps} == {
        "Reconstruction z-score distribution",
        "Ensemble agreement distribution",
    }
    for panel in heatmaps:
        (target,) = panel["targets"]
        assert target["format"] == "heatmap" and "_bucket{" in target["expr"] and "by (le)" in target["expr"]


def test_dashboard_covers_what_operators_watch() -> None:
    text = " ".join(query for panel in PANELS for query in _queries(panel))
    for metric in (
        "defended_http_requests_total",
        "defended_http_request_duration_seconds_bucket",
        "defended_engine_batch_images",
        "defended_engine_duration_seconds_bucket",
        "defended_queue_wait_seconds_bucket",
        "defended_queue_length",
        "defended_queue_rejected_total",
        'defended_flagged_total{namespace=~"$namespace", job=~"$job", model=~"$model", version=~"$version", reason="any"}',
        'reason!="any"',
        "defended_flag_rate_baseline",
        "defended_reconstruction_zscore_bucket",
        "defended_ensemble_agreement_bucket",
        "defended_purification_changed_label_total",
        "defended_predictions_total",
        "defended_model_info",
        "process_cpu_seconds_total",
        "DCGM_FI_DEV_GPU_UTIL",
    ):
        assert metric in text, metric
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(defended_http_request_duration" in text


def test_docs_describe_every_panel() -> None:
    docs = (REPO_ROOT / "docs" / "DEPLOY.md").read_text()
    for panel in (p for p in PANELS if p["type"] != "row"):
        assert f"**{panel['title']}**" in docs, panel["title"]
