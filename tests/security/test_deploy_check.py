"""``manage.py check --deploy`` with production settings: clean, with nothing silenced.

Each run is a fresh ``manage.py`` process with only the production environment a deploy sets
(no variable of the test run leaks in), so the settings module is read exactly as in production.
The negative cases prove the check is live: an insecure value is reported, a missing secret
refuses to start.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def production_env(tmp_path: Path, **overrides: str | None) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "TERMINUS_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(50),  # 67 random characters
        "DATABASE_URL": "postgres://terminus@db.internal:5432/terminus",
        "CELERY_BROKER_URL": "redis://redis.internal:6379/0",
        "ALLOWED_HOSTS": "terminus.example.com",
        "CSRF_TRUSTED_ORIGINS": "https://terminus.example.com",
        "TERMINUS_VAR_DIR": str(tmp_path / "var"),
        "TERMINUS_METRICS_TOKEN": secrets.token_urlsafe(32),
    }
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_deploy_is_clean_with_production_settings_and_nothing_silenced(tmp_path):
    result = check_deploy(production_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


@pytest.mark.parametrize(
    ("overrides", "reported"),
    [
        pytest.param({"DEBUG": "true"}, "security.W018", id="debug-on"),
        pytest.param({"SECRET_KEY": "short-and-guessable"}, "security.W009", id="weak-secret-key"),
        pytest.param({"ALLOWED_HOSTS": None}, "security.W020", id="no-allowed-hosts"),
    ],
)
def test_check_deploy_reports_an_insecure_production_setting(tmp_path, overrides, reported):
    result = check_deploy(production_env(tmp_path, **overrides))
    assert result.returncode != 0
    assert reported in result.stdout + result.stderr


@pytest.mark.parametrize("missing", ["SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL", "TERMINUS_METRICS_TOKEN"])
def test_production_refuses_to_start_without_a_required_secret(tmp_path, missing):
    result = check_deploy(production_env(tmp_path, **{missing: None}))
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert f"{missing} is required" in result.stderr


def test_production_serves_metrics_without_a_token_only_when_told_it_is_on_a_private_network(tmp_path):
    env = production_env(tmp_path, TERMINUS_METRICS_TOKEN=None, TERMINUS_METRICS_PUBLIC="true")
    result = check_deploy(env)
    assert result.returncode == 0, result.stdout + result.stderr
