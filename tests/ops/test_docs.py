"""The runbook and the README name what really exists: the fleet verbs, the metrics, the runbook link."""

from __future__ import annotations

import re

from results.management.commands.fleet import Command
from tests.helpers import ROOT

RUNBOOK = ROOT / "docs" / "RUNBOOK.md"
README = ROOT / "README.md"
METRIC_SUFFIXES = ("_total", "_count", "_bucket", "_sum")


def fleet_verbs() -> set[str]:
    parser = Command().create_parser("manage.py", "fleet")
    (verbs,) = [action for action in parser._actions if action.dest == "verb"]
    return set(verbs.choices)


def test_the_readme_links_the_runbook():
    assert "(docs/RUNBOOK.md)" in README.read_text()


def test_every_fleet_verb_is_in_the_runbook_reference():
    reference = RUNBOOK.read_text().split("## Fleet CLI reference", 1)[1]
    documented = set(re.findall(r"^\| `(\w+)", reference, re.MULTILINE))
    assert documented == fleet_verbs() == {"queues", "workers", "stuck", "failures", "pause", "resume", "drain"}


def test_every_metric_the_docs_name_is_exported():
    source = (ROOT / "project" / "metrics.py").read_text()
    exported = set(re.findall(r'"(terminus_[a-z_]+)"', source))
    named = set(re.findall(r"\bterminus_[a-z_]+\b", RUNBOOK.read_text() + README.read_text()))
    for name in sorted(named):
        base = next((name.removesuffix(s) for s in METRIC_SUFFIXES if name.endswith(s)), name)
        if base.startswith(("terminus_worker", "terminus_keda", "terminus_secrets", "terminus_env")):
            continue  # deploy names (terminus-worker@…, Secrets), not metrics
        assert base in exported, f"the docs name {name}, which /metrics does not export"
