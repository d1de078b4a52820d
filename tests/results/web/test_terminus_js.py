"""Runs terminus.js's unit tests (tests/results/web/js/*.test.mjs) with node's built-in test runner.

Node comes from PATH or, on a machine without it, from the Playwright package (its driver ships
a node binary), so CI needs nothing extra.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

JS_TESTS = Path(__file__).parent / "js"


def node_executable() -> str | None:
    found = shutil.which("node")
    if found:
        return found
    try:
        import playwright
    except ImportError:
        return None
    bundled = Path(playwright.__file__).parent / "driver" / "node"
    return str(bundled) if bundled.exists() else None


def test_the_js_client_unit_tests_pass() -> None:
    node = node_executable()
    if node is None:
        pytest.skip("no node on PATH and no node in the playwright package: cannot run tests/results/web/js")
    files = sorted(str(path) for path in JS_TESTS.glob("*.test.mjs"))
    assert files, f"no JS tests in {JS_TESTS}"
    result = subprocess.run(
        [node, "--test", "--test-reporter=tap", *files], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout, result.stdout[-4000:]
