"""deploy/prometheus/terminus-rules.yml: promtool accepts the rules and their unit tests pass
(terminus-rules.test.yml), the alerts the operations guide relies on are there, each with a
severity and a runbook section that exists in docs/operations.md.

That /metrics serves every metric the rules name is proven against a live scrape in
tests/ops/test_metrics.py.
"""

from __future__ import annotations

import re

import pytest

from tests.deploy.helpers import ROOT, run
from tests.deploy.monitoring import RULES, RULES_TESTS, metric_names, promtool, rules

needs_promtool = pytest.mark.skipif(
    promtool() is None, reason="promtool is not installed (`make install` apt-installs Debian's prometheus)"
)


@needs_promtool
def test_promtool_accepts_the_rules():
    result = run(str(promtool()), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


@needs_promtool
def test_the_rules_unit_tests_pass():
    result = run(str(promtool()), "test", "rules", str(RULES_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_every_alert_has_a_unit_test():
    tested = set(re.findall(r"alertname: (\w+)", RULES_TESTS.read_text()))
    assert sorted(rule["alert"] for rule in rules() if rule["alert"] not in tested) == []


@pytest.mark.parametrize(
    ("alert", "metric"),
    [
        ("TerminusJobsPastDeadline", "terminus_jobs_past_deadline"),
        ("TerminusDeadLettersOpen", "terminus_dead_letters_open"),
        ("TerminusDeadLetterOld", "terminus_dead_letter_oldest_age_seconds"),
        ("TerminusQueueWaiting", "terminus_queue_oldest_job_age_seconds"),
        ("TerminusNoRepairPass", "terminus_repair_pass_age_seconds"),
        ("TerminusNoWorkers", "terminus_workers_alive"),
    ],
)
def test_the_alert_is_shipped(alert: str, metric: str):
    (rule,) = [rule for rule in rules() if rule.get("alert") == alert]
    assert metric in metric_names(rule["expr"])


def test_every_alert_has_a_severity_a_summary_and_a_runbook_section_that_exists():
    headings = set(re.findall(r"^## (.+)$", (ROOT / "docs" / "operations.md").read_text(), re.MULTILINE))
    for rule in rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["runbook_section"] in headings, rule["alert"]


def test_the_name_reader_finds_metrics_not_functions_labels_or_keywords():
    expr = (
        'histogram_quantile(0.95, sum by (le, type) (rate(a_bucket{status=~"5..", x="by"}[$__rate_interval])))'
        " > 3 * b and on () c offset 5m unless d == bool Inf"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c", "d"}
