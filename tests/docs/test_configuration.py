"""docs/configuration.md lists exactly the environment variables project/settings.py reads."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.helpers import ROOT

SETTINGS = ROOT / "project" / "settings.py"
CONFIGURATION = ROOT / "docs" / "configuration.md"
#: The settings' readers (project/settings.py): each takes the variable's name first.
READERS = frozenset({"env_str", "env_bool", "env_int", "env_float", "env_list"})
#: Where the page stops listing what settings read (the deploy scripts' variables follow).
DEPLOY_SECTION = "## Read by the deploy scripts, not by settings"


def variables_settings_read(source: str) -> set[str]:
    """Every variable name the settings module reads: ``env_*("NAME", …)`` and ``os.environ`` reads."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        first = node.args[0]
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            continue
        func = node.func
        if (isinstance(func, ast.Name) and func.id in READERS) or (
            isinstance(func, ast.Attribute) and func.attr in {"get", "getenv"} and "environ" in ast.unparse(func)
        ):
            names.add(first.value)
    return names


def variables_documented(markdown: str) -> set[str]:
    """The variable of each table row (its first cell, in backticks) before the deploy scripts' section."""
    settings_part = markdown.split(DEPLOY_SECTION, 1)[0]
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", settings_part, re.MULTILINE))


def test_every_variable_settings_read_is_documented_and_every_documented_one_is_read():
    read = variables_settings_read(SETTINGS.read_text())
    documented = variables_documented(CONFIGURATION.read_text())
    assert read, "no variable found in project/settings.py: the reader names changed?"
    assert sorted(read - documented) == [], "read by settings but not in docs/configuration.md"
    assert sorted(documented - read) == [], "in docs/configuration.md but not read by settings"


def test_each_variable_is_documented_once():
    rows = re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", CONFIGURATION.read_text(), re.MULTILINE)
    assert sorted({name for name in rows if rows.count(name) > 1}) == []


def test_the_check_sees_a_variable_missing_from_the_docs_and_one_settings_do_not_read(tmp_path: Path):
    # Given settings that read one more variable, and docs that list one settings do not read
    source = SETTINGS.read_text() + '\nEXTRA = env_int("TERMINUS_NOT_DOCUMENTED", 1)\n'
    markdown = CONFIGURATION.read_text().replace(
        "| `LOG_LEVEL` |", "| `TERMINUS_NOT_READ` | x | x | x | x |\n| `LOG_LEVEL` |", 1
    )
    # Then both show up
    assert "TERMINUS_NOT_DOCUMENTED" in variables_settings_read(source) - variables_documented(markdown)
    assert "TERMINUS_NOT_READ" in variables_documented(markdown) - variables_settings_read(source)
