"""deploy/systemd/: the units parse (systemd-analyze verify, where installed) and keep the invariants.

``systemd-analyze verify`` exits 0 even for a bad value ("Failed to parse ... ignoring"), so any
line it prints fails the check. The units name /opt/terminus and the terminus user; the copies
it verifies point at this checkout and the current user instead.
"""

from __future__ import annotations

import getpass
import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.deploy.helpers import DEPLOY, SYSTEMD, default_queues, max_time_limit, ops_queues, run, seconds

UNITS = {
    "terminus-web.service": "start-web.sh",
    "terminus-worker@.service": "start-worker.sh",
    "terminus-beat.service": "start-beat.sh",
}
INSTALL_ROOT = "/opt/terminus"


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values...]}}: systemd allows a key more than once (Environment=)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = ""
    for line in (SYSTEMD / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if match := re.fullmatch(r"\[(\w+)\]", line):
            current = match.group(1)
            sections.setdefault(current, {})
            continue
        key, _, value = line.partition("=")
        sections[current].setdefault(key, []).append(value)
    return sections


def environment(name: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in unit(name)["Service"].get("Environment", []))


def verify(path: Path) -> str:
    result = run("systemd-analyze", "verify", "--man=no", str(path))
    return (result.stdout + result.stderr).strip()


def local_copy(name: str, directory: Path, *, instance: str = "default") -> Path:
    text = (SYSTEMD / name).read_text().replace(f"{INSTALL_ROOT}/.venv/bin/python", sys.executable)
    text = text.replace(INSTALL_ROOT, str(DEPLOY.parent))
    text = text.replace("/etc/terminus/terminus.env", str(directory / "terminus.env"))
    user = getpass.getuser()
    text = re.sub(r"^User=.*$", f"User={user}", text, flags=re.MULTILINE)
    text = re.sub(r"^Group=.*$", f"Group={user}", text, flags=re.MULTILINE)
    (directory / "terminus.env").write_text("TERMINUS_ENV=production\n")
    path = directory / name.replace("@.", f"@{instance}.")
    path.write_text(text)
    return path


def test_the_units_are_one_per_role() -> None:
    assert sorted(path.name for path in SYSTEMD.iterdir()) == sorted(UNITS)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_analyze_verify_is_clean(name: str, tmp_path: Path) -> None:
    output = verify(local_copy(name, tmp_path))
    assert output == "", output


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_a_broken_unit_fails_verification(tmp_path: Path) -> None:
    """The checker is live: a bad signal name and a misspelt key are reported."""
    path = local_copy("terminus-beat.service", tmp_path)
    path.write_text(path.read_text().replace("KillSignal=SIGTERM", "KillSignal=SIGTREM\nRestartt=always"))
    output = verify(path)
    assert "SIGTREM" in output and "Restartt" in output, output


@pytest.mark.parametrize(("name", "script"), sorted(UNITS.items()))
def test_each_unit_runs_its_role_through_the_entrypoint(name: str, script: str) -> None:
    service = unit(name)["Service"]
    assert service["ExecStart"] == [f"{INSTALL_ROOT}/deploy/entrypoint.sh {INSTALL_ROOT}/deploy/{script}"]
    assert (DEPLOY / script).is_file()
    assert service["EnvironmentFile"] == ["/etc/terminus/terminus.env"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert service["KillMode"] == ["mixed"], "SIGTERM to the main process only; it stops its children"
    assert service["Restart"] == ["on-failure"]
    assert service["User"] != ["root"]
    assert unit(name)["Install"]["WantedBy"] == ["multi-user.target"]


def test_workers_outlive_the_longest_job() -> None:
    stop = seconds(unit("terminus-worker@.service")["Service"]["TimeoutStopSec"][0])
    assert stop > max_time_limit(), f"TimeoutStopSec {stop:g} <= {max_time_limit()}"
    for name in ("terminus-web.service", "terminus-beat.service"):
        assert seconds(unit(name)["Service"]["TimeoutStopSec"][0]) >= 30, name


def test_the_worker_template_takes_its_queue_from_the_instance_name() -> None:
    env = environment("terminus-worker@.service")
    assert env["WORKER_QUEUES"] == "%i"
    assert env["WORKER_NAME"].startswith("%i@")


def test_only_the_web_unit_migrates() -> None:
    assert environment("terminus-web.service").get("RUN_MIGRATIONS") == "1"
    for name in ("terminus-worker@.service", "terminus-beat.service"):
        assert environment(name).get("RUN_MIGRATIONS", "0") == "0", name


def test_web_and_workers_share_one_metrics_directory_in_their_state_directory() -> None:
    """Workers count attempt events there (a subdirectory each); web's /metrics adds them up."""
    web, worker = environment("terminus-web.service"), environment("terminus-worker@.service")
    assert web["PROMETHEUS_MULTIPROC_DIR"] == worker["PROMETHEUS_MULTIPROC_DIR"]
    for name in ("terminus-web.service", "terminus-worker@.service"):
        state = unit(name)["Service"]["StateDirectory"][0]
        assert web["PROMETHEUS_MULTIPROC_DIR"].startswith(f"/var/lib/{state}/"), "writable under ProtectSystem=strict"


def test_the_install_line_starts_a_worker_for_every_queue_the_dead_letters_and_the_crons() -> None:
    text = (SYSTEMD / "terminus-web.service").read_text()
    for queue in [*default_queues(), *ops_queues()]:
        assert f"terminus-worker@{queue}" in text, queue
