"""The monitoring files deploy/ ships (Grafana dashboard, Prometheus rules) and the metric names their
queries use: read by tests/deploy (the files' shape, promtool) and tests/ops (/metrics serves them)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.helpers import DEPLOY

DASHBOARD = DEPLOY / "grafana" / "terminus-dashboard.json"
RULES = DEPLOY / "prometheus" / "terminus-rules.yml"
RULES_TESTS = DEPLOY / "prometheus" / "terminus-rules.test.yml"
#: Grafana's variables in the dashboard's queries, and what stands in for them where PromQL is parsed.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
#: PromQL words that look like a metric name: operators, modifiers, and the literals Inf and NaN.
PROMQL_WORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"inf", "nan", "atan2", "start", "end"}
)


def promtool() -> str | None:
    """Debian's promtool (package prometheus; `make install` installs it), if present."""
    return shutil.which("promtool")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    panels = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels += panel.get("panels", [])
    return panels


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in dashboard_panels() for target in panel.get("targets", [])]


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def rule_queries() -> list[str]:
    return [rule["expr"] for rule in rules()]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: neither functions, label names nor keywords.

    A small reading of PromQL, enough for the files we ship: strings, label matchers, range and
    subquery brackets and the label lists of by/without/on/ignoring/group_* are dropped first.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = re.findall(r"(?<![\w:.$])([A-Za-z_:][\w:]*)\b(?!\s*\()", text)
    return {name for name in names if name.lower() not in PROMQL_WORDS}


def parseable(expr: str) -> str:
    """The dashboard query with Grafana's variables replaced, as Prometheus would receive it."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def referenced_metric_names() -> set[str]:
    """Every metric name the dashboard and the alert rules query."""
    return {name for expr in [*dashboard_queries(), *rule_queries()] for name in metric_names(expr)}


def write_as_recording_rules(queries: list[str], path: Path) -> Path:
    """A rules file with one recording rule per query, so `promtool check rules` parses each one."""
    group = {"name": "parse", "rules": [{"record": f"query:{n}", "expr": q} for n, q in enumerate(queries)]}
    path.write_text(yaml.safe_dump({"groups": [group]}, sort_keys=False))
    return path
