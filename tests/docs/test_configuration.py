"""docs/configuration.md lists exactly the environment variables project/settings.py reads."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT

SETTINGS = ROOT / "project" / "settings.py"
CONFIGURATION = ROOT / "docs" / "configuration.md"
#: The settings' readers (project/settings.py): each takes the variable's name first.
READERS = frozenset({"env_str", "env_bool", "env_int", "env_float", "env_list", "env_schedule"})
#: Where the page stops listing what settings read (the deploy scripts' variables follow).
DEPLOY_SECTION = "## Read by the deploy scripts, not by settings"


def is_environ(node: ast.expr) -> bool:
    """``os.environ`` or a bare ``environ`` (``from os import environ``)."""
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ"
    )


def variable_read_by(node: ast.AST) -> str | None:
    """The literal name a node reads from the environment, if it is such a read.

    ``env_*("NAME", …)``; ``os.environ.get("NAME")``, ``os.environ["NAME"]``, ``os.getenv("NAME")``
    (and the same after ``from os import environ, getenv``). The readers' own ``NAME_FILE`` lookup
    takes a computed name and is documented once, at the top of docs/configuration.md.
    """
    if isinstance(node, ast.Subscript) and is_environ(node.value):
        key = node.slice
    elif isinstance(node, ast.Call) and node.args:
        func = node.func
        reads = (
            (isinstance(func, ast.Name) and func.id in READERS | {"getenv"})
            or (isinstance(func, ast.Attribute) and func.attr == "getenv")
            or (isinstance(func, ast.Attribute) and func.attr in {"get", "setdefault"} and is_environ(func.value))
        )
        if not reads:
            return None
        key = node.args[0]
    else:
        return None
    return key.value if isinstance(key, ast.Constant) and isinstance(key.value, str) else None


def variables_settings_read(source: str) -> set[str]:
    """Every variable name the settings module reads, found by parsing it (settings are never imported)."""
    return {name for node in ast.walk(ast.parse(source)) if (name := variable_read_by(node))}


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


@pytest.mark.parametrize(
    "line",
    [
        'X = env_str("TERMINUS_PROBE")',
        'X = env_bool("TERMINUS_PROBE", False)',
        'X = env_int("TERMINUS_PROBE", 1, minimum=0)',
        'X = env_float("TERMINUS_PROBE", 1.0)',
        'X = env_list("TERMINUS_PROBE", [])',
        'X = os.environ.get("TERMINUS_PROBE")',
        'X = os.environ["TERMINUS_PROBE"]',
        'X = os.getenv("TERMINUS_PROBE", "")',
        'X = environ.get("TERMINUS_PROBE")',
        'X = getenv("TERMINUS_PROBE")',
    ],
)
def test_the_check_sees_every_way_settings_can_read_a_variable(line: str):
    assert variables_settings_read(line) == {"TERMINUS_PROBE"}


def test_the_check_ignores_computed_names_and_other_dicts():
    source = 'A = os.environ.get(f"{name}_FILE")\nB = os.environ.get(name)\nC = options.get("TERMINUS_PROBE")\n'
    assert variables_settings_read(source) == set()
