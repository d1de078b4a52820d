"""docker-compose.yml: valid against the Compose Specification (offline), and Terminus' invariants.

No Docker engine is needed: check-jsonschema validates with the compose-spec schema it ships
(``check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml``), and the rest
reads the YAML.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.urls import resolve

from tasks.fleet.readiness import CHECKS
from tests.deploy.helpers import (
    COMPOSE_FILE,
    DEPLOY,
    IMAGE_DEPLOY,
    ROOT,
    active_env_example,
    consumed,
    default_queues,
    env_example,
    max_time_limit,
    ops_queues,
    run,
    seconds,
    tool,
    unknown_env_names,
)

APP_SERVICES = {"web", "worker", "worker-slow", "worker-dead-letter", "beat"}
WORKER_QUEUES = {"worker": "default", "worker-slow": "slow", "worker-dead-letter": "dead_letter,crons"}
OPERATIONS = ROOT / "docs" / "operations.md"
SERVICES = APP_SERVICES | {"postgres", "redis", "flower", "rabbitmq"}
# The third-party images' own server commands.
THIRD_PARTY_COMMANDS = {"redis": "redis-server"}
ROLE_SCRIPTS = {"start-web.sh": "web", "start-worker.sh": "worker", "start-beat.sh": "beat"}


def check_compose(path: Path) -> tuple[int, str]:
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path))
    return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def script_of(service: dict[str, Any]) -> str | None:
    """The deploy/ start script a service runs, e.g. "start-worker.sh" (None for other images)."""
    command = service.get("command") or []
    if command and str(command[0]).startswith(IMAGE_DEPLOY):
        return str(command[0]).removeprefix(IMAGE_DEPLOY)
    return None


def services_running(services: dict[str, dict[str, Any]], script: str) -> dict[str, dict[str, Any]]:
    return {name: service for name, service in services.items() if script_of(service) == script}


def test_it_is_valid_against_the_compose_specification() -> None:
    returncode, output = check_compose(COMPOSE_FILE)
    assert returncode == 0, output
    assert "ok -- validation done" in output


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        pytest.param(lambda c: c["services"]["web"].update(ports=8000), "ports", id="ports-not-a-list"),
        pytest.param(
            lambda c: c["services"]["worker"]["depends_on"]["web"].update(condition="service_happy"),
            "depends_on",
            id="bad-depends-on-condition",
        ),
        pytest.param(lambda c: c["services"]["beat"].update(restrat="always"), "restrat", id="misspelt-key"),
        pytest.param(
            lambda c: c["services"]["worker"].update(stop_grace_period=3700),
            "stop_grace_period",
            id="grace-not-a-duration",
        ),
        pytest.param(
            lambda c: c["services"]["web"]["healthcheck"].update(intervall="30s"),
            "intervall",
            id="misspelt-healthcheck-key",
        ),
    ],
)
def test_a_broken_copy_fails_validation(tmp_path: Path, breakage: Any, expected: str) -> None:
    """The validator is live: the same file with one mistake is rejected, naming the mistake."""
    broken = yaml.safe_load(COMPOSE_FILE.read_text())
    breakage(broken)
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    returncode, output = check_compose(path)
    assert returncode != 0, output
    assert expected in output, output


def test_it_declares_the_services_terminus_needs(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == SERVICES
    assert services["rabbitmq"].get("profiles") == ["rabbitmq"], "RabbitMQ is opt-in"
    assert [name for name, s in services.items() if s.get("profiles")] == ["rabbitmq"]
    assert services["postgres"]["image"].startswith(("postgres:16", "postgres:15"))
    assert services["redis"]["image"] == "redis:7-alpine"
    assert "--appendonly" in services["redis"]["command"]
    assert services["rabbitmq"]["image"] == "rabbitmq:3-management-alpine"
    assert "8000:8000" in [str(p) for p in services["web"]["ports"]]
    assert any(str(p).endswith("5555:5555") for p in services["flower"]["ports"])


def test_app_services_share_the_terminus_common_anchor(services: dict[str, dict[str, Any]]) -> None:
    """web, worker, worker-slow and beat merge the same x-terminus-common node (``<<: *terminus-common``)."""
    text = COMPOSE_FILE.read_text()
    assert re.search(r"^x-terminus-common: &terminus-common$", text, re.MULTILINE)
    top = {key.value: value for key, value in yaml.compose(text).value}
    anchor = top["x-terminus-common"]  # an alias composes to the very node it names
    service_nodes = {key.value: value for key, value in top["services"].value}
    for name in APP_SERVICES:
        merged = [value for key, value in service_nodes[name].value if key.value == "<<"]
        assert len(merged) == 1 and merged[0] is anchor, f"{name} does not merge x-terminus-common"
    common = [(s["image"], s["build"], s["env_file"]) for n, s in services.items() if n in APP_SERVICES]
    assert len(set(map(repr, common))) == 1
    assert services["web"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / services["web"]["build"]["context"] / services["web"]["build"]["dockerfile"]).is_file()
    assert services["web"]["env_file"] == ".env"


def test_every_command_is_a_deploy_script_or_celery_or_gunicorn(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        command = service.get("command")
        if command is None:
            continue
        assert isinstance(command, list), f"{name}: use the exec (list) form, so signals reach the process"
        script = script_of(service)
        if script is not None:
            path = DEPLOY / script
            assert path.is_file(), f"{name} runs {command[0]}, but {path} does not exist"
            assert os.access(path, os.X_OK), f"{path} is not executable"
        else:
            assert command[0] in {"celery", "gunicorn", THIRD_PARTY_COMMANDS.get(name)}, f"{name}: {command}"
    assert set(map(script_of, (services[n] for n in APP_SERVICES))) == set(ROLE_SCRIPTS)


def test_every_service_has_a_healthcheck_and_dependencies_wait_for_health(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        script = script_of(service)
        if script is not None:  # the image's own checker, for this service's role
            assert check["test"] == ["CMD", "python", f"{IMAGE_DEPLOY}healthcheck.py", ROLE_SCRIPTS[script]]
        assert "curl" not in str(check["test"]), "slim images have no curl"
        for dependency, how in (service.get("depends_on") or {}).items():
            assert how == {"condition": "service_healthy"}, f"{name} -> {dependency}: {how}"
            assert services[dependency].get("healthcheck"), dependency
    assert (DEPLOY / "healthcheck.py").is_file()


def test_there_is_exactly_one_beat(services: dict[str, dict[str, Any]]) -> None:
    beats = services_running(services, "start-beat.sh")
    assert list(beats) == ["beat"]
    beat = beats["beat"]
    assert beat.get("deploy", {}).get("replicas", 1) == 1
    assert beat.get("scale", 1) == 1
    assert "container_name" not in beat


def test_workers_outlive_the_longest_job(services: dict[str, dict[str, Any]]) -> None:
    """SIGTERM is a warm shutdown; Docker SIGKILLs after stop_grace_period (default 10 s)."""
    workers = services_running(services, "start-worker.sh")
    assert set(workers) == set(WORKER_QUEUES)
    for name, worker in workers.items():
        assert worker.get("stop_signal", "SIGTERM") == "SIGTERM", name
        grace = seconds(worker.get("stop_grace_period", "10s"))
        assert grace > max_time_limit(), f"{name}: stop_grace_period {grace:g}s <= {max_time_limit()}s"


def test_each_queue_has_its_own_worker_service(services: dict[str, dict[str, Any]]) -> None:
    workers = services_running(services, "start-worker.sh")
    queues = {name: worker["environment"]["WORKER_QUEUES"] for name, worker in workers.items()}
    assert queues == WORKER_QUEUES
    configured = active_env_example().get("TERMINUS_QUEUES", ",".join(default_queues())).split(",")
    # Every configured queue needs a consumer, and so do final failures and the crons.
    assert consumed(list(queues.values())) == sorted([*configured, *ops_queues()])
    for name, worker in workers.items():
        assert worker["environment"]["TERMINUS_WORKER_METRICS_PORT"] == "9808", name


def test_only_web_runs_migrations(services: dict[str, dict[str, Any]]) -> None:
    migrating = [n for n, s in services.items() if str((s.get("environment") or {}).get("RUN_MIGRATIONS")) == "1"]
    assert migrating == ["web"]
    for name in APP_SERVICES - {"web"}:
        assert services[name]["depends_on"]["web"] == {"condition": "service_healthy"}, name


def test_env_names_are_read_by_settings_or_a_deploy_script(services: dict[str, dict[str, Any]]) -> None:
    """A typo in a variable name would otherwise be silently ignored."""
    for name, service in services.items():
        environment = service.get("environment") or {}
        assert isinstance(environment, dict), f"{name}: use the mapping form of environment"
        unknown = unknown_env_names(list(environment), third_party=name not in APP_SERVICES)
        assert not unknown, f"{name} sets variables nothing reads: {unknown}"
    assert not unknown_env_names(list(env_example()), third_party=True), ".env.example"


def test_interpolated_variables_are_in_the_env_example() -> None:
    """${VAR:?message} stops `docker compose up` unless .env defines VAR: .env.example must."""
    text = COMPOSE_FILE.read_text()
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    assert required, "expected POSTGRES_PASSWORD and FLOWER_BASIC_AUTH to be required"
    assert required <= set(active_env_example()), required - set(active_env_example())
    for name in set(re.findall(r"\$\{([A-Z0-9_]+)", text)) - required:
        assert re.search(rf"\$\{{{name}:-", text), f"${{{name}}} has neither a default nor :?"


def test_env_example_configures_production_against_the_compose_services() -> None:
    env = active_env_example()
    assert env["TERMINUS_ENV"] == "production"
    for name in ("SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL", "ALLOWED_HOSTS"):
        assert name in env, name
    assert re.fullmatch(r"postgres://terminus:[^@]+@postgres:5432/terminus", env["DATABASE_URL"])
    assert env["CELERY_BROKER_URL"] == "redis://redis:6379/0"
    assert "CHANGE-ME" in env["SECRET_KEY"], "the example must not ship a usable secret"
    password = re.match(r"postgres://terminus:([^@]+)@", env["DATABASE_URL"]).group(1)
    assert password == env["POSTGRES_PASSWORD"], "DATABASE_URL's password must match POSTGRES_PASSWORD"
    # deploy/healthcheck.py sends Host: localhost.
    assert "localhost" in env["ALLOWED_HOSTS"].split(",")


def header_commands() -> list[str]:
    """The commands in docker-compose.yml's header comment (lines "#   <command>")."""
    return [line[4:].strip() for line in COMPOSE_FILE.read_text().splitlines() if line.startswith("#   ")]


def documented_compose_commands() -> list[str]:
    """The commands of docs/operations.md's "Deploying with Docker Compose" code block."""
    text = OPERATIONS.read_text()
    section = text.split("## Deploying with Docker Compose", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_the_docs_document_exactly_the_compose_files_commands(services: dict[str, dict[str, Any]]) -> None:
    commands = header_commands()
    assert commands == documented_compose_commands()
    assert any(c.startswith("docker compose up -d --build") for c in commands)
    profiles = {profile for service in services.values() for profile in service.get("profiles", [])}
    for command in commands:
        for scaled in re.findall(r"--scale (\S+)=\d+", command):
            assert scaled in services and scaled != "beat", command
        for profile in re.findall(r"--profile (\S+)", command):
            assert profile in profiles, command
        if match := re.match(r"docker compose logs -f (\S+)$", command):
            assert match.group(1) in services, command
        if command.startswith("curl "):
            port = re.search(r"localhost:(\d+)/", command).group(1)
            assert f"{port}:{port}" in [str(p) for p in services["web"]["ports"]], command


def test_the_web_healthcheck_waits_for_the_database_not_for_the_workers_that_wait_for_it() -> None:
    """Workers and beat depend on web being healthy: web's check must not need them (a deadlock)."""
    source = (DEPLOY / "healthcheck.py").read_text()
    path = re.search(r"HEALTHCHECK_PATH\", \"([^\"]+)\"", source).group(1)
    assert path.startswith("/readyz?check=")
    checks = path.split("=", 1)[1].split(",")
    assert set(checks) <= set(CHECKS) and "workers" not in checks and "beat" not in checks
    assert resolve(path.split("?", 1)[0]).url_name == "readyz"
