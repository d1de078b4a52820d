"""The deploy checks' report: what a fresh install of the wheel weighs and how long it took."""

from __future__ import annotations

from typing import Any

from tests.deploy.wheel_install import WHEEL_REPORT


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if WHEEL_REPORT:
        terminalreporter.section("wheel install")
        for name, figure in WHEEL_REPORT.items():
            terminalreporter.write_line(f"{name}: {figure}")
