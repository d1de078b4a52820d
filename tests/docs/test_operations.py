"""The docs name what really exists: the fleet verbs, the metrics, the crons, the files they point to."""

from __future__ import annotations

import re

from results.management.commands.fleet import Command
from tasks.crons.beat import builtin_crons
from tasks.crons.registry import markdown_table
from tests.helpers import ROOT

DOCS = ROOT / "docs"
OPERATIONS = DOCS / "operations.md"
README = ROOT / "README.md"
METRIC_SUFFIXES = ("_total", "_count", "_bucket", "_sum")
#: Where the metrics are exported: the state gauges of /metrics and the workers' event counters.
METRIC_SOURCES = (
    ROOT / "results" / "ops" / "metrics.py",
    ROOT / "tasks" / "fleet" / "events.py",
    ROOT / "tasks" / "runtime" / "stale.py",
)


#: Names the docs use that are not metrics: deploy names (terminus-worker@…, Secrets), the cache table
#: and the Python client's import name.
NOT_METRICS = (
    "terminus_worker",
    "terminus_keda",
    "terminus_secrets",
    "terminus_env",
    "terminus_cache",
    "terminus_client",
)


def all_docs() -> str:
    return README.read_text() + "".join(page.read_text() for page in sorted(DOCS.glob("*.md")))


def fleet_verbs() -> set[str]:
    parser = Command().create_parser("manage.py", "fleet")
    (verbs,) = [action for action in parser._actions if action.dest == "verb"]
    return set(verbs.choices)


def test_the_readme_links_every_docs_page():
    readme = README.read_text()
    for page in sorted(DOCS.glob("*.md")):
        assert f"(docs/{page.name})" in readme, f"the README does not link docs/{page.name}"


def test_every_fleet_verb_is_in_the_operations_reference():
    reference = OPERATIONS.read_text().split("## Fleet CLI reference", 1)[1]
    documented = set(re.findall(r"^\| `(\w+)", reference, re.MULTILINE))
    assert documented == fleet_verbs() == {"queues", "workers", "stuck", "failures", "pause", "resume", "drain"}


def test_every_metric_the_docs_name_is_exported():
    exported = {name for source in METRIC_SOURCES for name in re.findall(r'"(terminus_[a-z_]+)"', source.read_text())}
    assert "terminus_jobs_past_deadline" in exported and "terminus_job_attempt_duration_seconds" in exported
    named = set(re.findall(r"\bterminus_[a-z_]+\b", all_docs()))
    for name in sorted(named):
        base = next((name.removesuffix(s) for s in METRIC_SUFFIXES if name.endswith(s)), name)
        if base.startswith(NOT_METRICS):
            continue
        assert base in exported, f"the docs name {name}, which /metrics does not export"


def test_the_crons_table_is_the_registry_rendered():
    """Adding a built-in cron (one @cron function) without updating docs/operations.md fails here."""
    assert markdown_table(builtin_crons()) in OPERATIONS.read_text()


def test_every_repository_path_the_docs_name_exists():
    named = set(re.findall(r"`((?:project|results|tasks|tests|deploy|docs|bench)/[\w./-]+)`", all_docs()))
    assert named, "no path found: the pattern no longer matches how the docs write paths"
    missing = sorted(path for path in named if not (ROOT / path.rstrip("/")).exists() and "<" not in path)
    assert missing == [], "the docs name paths that do not exist"
