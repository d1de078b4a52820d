"""Shared facts for the deploy checks: paths, the linters' executables, what settings.py reads."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SETTINGS = ROOT / "project" / "settings.py"
DOCKERFILE = DEPLOY / "Dockerfile"
# Where deploy/ lands in the image (deploy/Dockerfile: WORKDIR /app, COPY ... deploy/).
IMAGE_DEPLOY = "/app/deploy/"

# Variables the third-party images read (postgres, flower, rabbitmq), not Terminus.
THIRD_PARTY_PREFIXES = ("POSTGRES_", "FLOWER_", "RABBITMQ_")
# Read by Django/Celery themselves rather than through settings.py's env_* helpers.
FRAMEWORK_VARS = {"DJANGO_SETTINGS_MODULE"}


def tool(name: str) -> str:
    """A linter installed into this venv by the dev extras (pip install -e '.[dev]')."""
    path = Path(sys.executable).parent / name
    assert path.exists(), f"{name} is missing: pip install -e '.[dev]' installs it into {path.parent}"
    return str(path)


def run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT)


@cache
def settings_env_names() -> frozenset[str]:
    """Every variable project/settings.py reads, found in its source: env_str("NAME", ...) etc."""
    source = SETTINGS.read_text()
    names = set(re.findall(r"""env_(?:str|bool|int|float|list)\(\s*["']([A-Z][A-Z0-9_]*)["']""", source))
    names |= set(re.findall(r"""os\.environ(?:\.get)?[\[(]\s*["']([A-Z][A-Z0-9_]*)["']""", source))
    assert {"SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL", "TERMINUS_MAX_TIME_LIMIT"} <= names, names
    return frozenset(names)


@cache
def deploy_env_names() -> frozenset[str]:
    """Every variable the deploy/ scripts read: ${NAME...} in shell, os.environ.get("NAME") in Python."""
    names: set[str] = set()
    for script in DEPLOY.glob("*.sh"):
        names |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", script.read_text()))
    for script in DEPLOY.glob("*.py"):
        names |= set(re.findall(r"""environ\.get\(\s*["']([A-Z][A-Z0-9_]*)["']""", script.read_text()))
        names |= set(re.findall(r"""check_node\(\s*["']([A-Z][A-Z0-9_]*)["']""", script.read_text()))
    return frozenset(names - {"BASH_SOURCE"})


def unknown_env_names(names: set[str] | list[str], *, third_party: bool = False) -> list[str]:
    """The names that nothing reads (typos): neither settings.py, a deploy script nor Django."""
    known = settings_env_names() | deploy_env_names() | FRAMEWORK_VARS
    unknown = []
    for name in names:
        base = name.removesuffix("_FILE")  # settings.env_str honours NAME_FILE for every NAME
        if base in known or (third_party and name.startswith(THIRD_PARTY_PREFIXES)):
            continue
        unknown.append(name)
    return sorted(unknown)


def settings_default(name: str) -> Any:
    """The default settings.py gives an env_* variable, read from its source (``env_int("X", 5)``)."""
    for node in ast.walk(ast.parse(SETTINGS.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id.startswith("env_")
            and len(node.args) >= 2
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value == name
        ):
            return ast.literal_eval(node.args[1])
    raise AssertionError(f"settings.py has no env_*({name!r}, <default>) call")


def env_example() -> dict[str, str]:
    """.env.example's assignments, including commented-out ones (``# NAME=value``)."""
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if match and (not line.startswith("#") or match.group(1) not in values):
            values[match.group(1)] = match.group(2)
    return values


def active_env_example() -> dict[str, str]:
    """.env.example's uncommented assignments only."""
    return {
        name: value
        for line in ENV_EXAMPLE.read_text().splitlines()
        if (match := re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line))
        for name, value in [match.groups()]
    }


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def k8s_configmap() -> dict[str, str]:
    (data,) = [doc["data"] for _, doc in k8s_documents() if doc["kind"] == "ConfigMap"]
    return data


def max_time_limit() -> int:
    """The longest job any deploy file allows: settings' default or a value a deploy file sets."""
    candidates = [int(settings_default("TERMINUS_MAX_TIME_LIMIT"))]
    if "TERMINUS_MAX_TIME_LIMIT" in env_example():
        candidates.append(int(env_example()["TERMINUS_MAX_TIME_LIMIT"]))
    if "TERMINUS_MAX_TIME_LIMIT" in k8s_configmap():
        candidates.append(int(k8s_configmap()["TERMINUS_MAX_TIME_LIMIT"]))
    return max(candidates)


def default_queues() -> list[str]:
    """TERMINUS_QUEUES' default in settings.py, e.g. ["default", "slow"]."""
    return list(settings_default("TERMINUS_QUEUES"))


def ops_queues() -> list[str]:
    """Queues every deployment must consume besides the job queues: final failures and the crons."""
    from tasks.failure.dead_letters import DEAD_LETTER_QUEUE

    return [DEAD_LETTER_QUEUE, str(settings_default("TERMINUS_CRON_QUEUE"))]


def consumed(worker_queues: list[str]) -> list[str]:
    """Every queue named by a list of WORKER_QUEUES values ("dead_letter,crons" is two)."""
    return sorted(queue for value in worker_queues for queue in value.split(","))


def seconds(duration: str | int) -> float:
    """A Compose / systemd duration ("1h1m40s", "3700s", "90", 3700) in seconds."""
    if isinstance(duration, int):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6, "min": 60}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|us|min|h|m|s)?", duration.strip())
    assert parts and "".join(n + (u or "") for n, u in parts) == duration.replace(" ", ""), duration
    return sum(float(n) * units[u or "s"] for n, u in parts)
