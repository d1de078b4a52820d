"""deploy/grafana/terminus-dashboard.json: valid against Grafana's dashboard model, laid out on the grid,
every query parsed by Prometheus' own parser (promtool), and showing what an operator looks at first.

That /metrics serves every metric the queries name is proven against a live scrape in
tests/ops/test_metrics.py.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import jsonschema
import pytest

from tests.deploy.grafana_schema import DASHBOARD_SCHEMA
from tests.deploy.helpers import run
from tests.deploy.monitoring import (
    dashboard,
    dashboard_panels,
    dashboard_queries,
    metric_names,
    parseable,
    promtool,
    write_as_recording_rules,
)


def data_panels() -> list[dict]:
    return [panel for panel in dashboard_panels() if panel["type"] != "row"]


def test_the_dashboard_matches_grafanas_dashboard_model():
    errors = sorted(jsonschema.Draft202012Validator(DASHBOARD_SCHEMA).iter_errors(dashboard()), key=str)
    assert [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in errors] == []


def test_the_schema_refuses_a_misspelt_key_and_a_panel_without_a_query():
    broken = dashboard()
    broken["panels"][1]["gridpos"] = broken["panels"][1].pop("gridPos")
    broken["panels"][2]["targets"] = []
    messages = [error.message for error in jsonschema.Draft202012Validator(DASHBOARD_SCHEMA).iter_errors(broken)]
    assert any("'gridPos' is a required property" in message for message in messages), messages
    assert any("should be non-empty" in message or "is too short" in message for message in messages), messages


def test_panel_ids_are_unique_and_each_panels_queries_have_their_own_ref_ids():
    ids = [panel["id"] for panel in dashboard_panels()]
    assert len(ids) == len(set(ids))
    for panel in data_panels():
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_panels_fit_the_24_columns_and_do_not_overlap():
    def cells(panel: dict) -> set[tuple[int, int]]:
        grid = panel["gridPos"]
        return {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }

    for panel in dashboard_panels():
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
    for first, second in itertools.combinations(dashboard_panels(), 2):
        assert not cells(first) & cells(second), (first["title"], second["title"])


def test_every_query_asks_the_prometheus_the_importer_chose():
    (variable,) = [item for item in dashboard()["templating"]["list"] if item["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    chosen = {"type": "prometheus", "uid": f"${{{variable['name']}}}"}
    for panel in data_panels():
        assert panel["datasource"] == chosen, panel["title"]
        assert all(target["datasource"] == chosen for target in panel["targets"]), panel["title"]


@pytest.mark.parametrize(
    ("topic", "metric", "needs"),
    [
        ("throughput", "terminus_job_attempt_duration_seconds_count", "rate("),
        ("failures by type", "terminus_job_failures_total", "by (type"),
        ("queue depth", "terminus_queue_depth", "by (queue)"),
        ("queue oldest age", "terminus_queue_oldest_job_age_seconds", "by (queue)"),
        ("attempt duration percentiles", "terminus_job_attempt_duration_seconds_bucket", "histogram_quantile(0.99"),
        ("dead letters open", "terminus_dead_letters_open", ""),
        ("jobs past deadline", "terminus_jobs_past_deadline", ""),
        ("workers alive", "terminus_workers_alive", ""),
        ("repair pass", "terminus_repair_pass_age_seconds", ""),
        ("HTTP latency", "django_http_requests_latency_seconds_by_view_method_bucket", "histogram_quantile(0.95"),
        ("HTTP status codes", "django_http_responses_total_by_status_view_method_total", "by (status)"),
    ],
)
def test_the_dashboard_shows(topic: str, metric: str, needs: str):
    assert any(metric in metric_names(query) and needs in query for query in dashboard_queries()), topic


@pytest.mark.skipif(promtool() is None, reason="promtool is not installed (`make install` apt-installs prometheus)")
def test_every_query_parses_as_promql(tmp_path: Path):
    rules = write_as_recording_rules([parseable(query) for query in dashboard_queries()], tmp_path / "queries.yml")
    result = run(str(promtool()), "check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(dashboard_queries())} rules found" in result.stdout
