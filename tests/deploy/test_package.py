"""The package as users take it: the sdist and the wheel hold every file, and a wheel installed in a
fresh virtualenv outside the checkout serves every page in production mode.

The site's database follows the run: a PostgreSQL database of its own (``<name>_wheel``, created and
dropped here) on the services pass, a SQLite file on the embedded one. Nothing connects to the broker:
its URL is only what production mode requires. pip may fetch the dependencies from the index or its
cache; the install time and the venv's size are printed in the terminal summary.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.apps import apps
from django.conf import settings
from django.contrib import admin
from django.urls import reverse
from psycopg import sql

from tests.deploy.helpers import ROOT
from tests.deploy.wheel_install import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    WHEEL_REPORT,
    BehindTheProxy,
    Distributions,
    Gunicorn,
    Site,
    Venv,
    build_distributions,
    megabytes,
    package_files,
    sdist_files,
    static_links,
    wheel_files,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder outside the checkout, so nothing can be imported from the source tree by accident."""
    path = tmp_path_factory.mktemp("wheel")
    assert not path.resolve().is_relative_to(ROOT)
    return path


@pytest.fixture(scope="module")
def distributions(outside: Path) -> Distributions:
    return build_distributions(outside / "build")


@pytest.fixture(scope="module")
def venv(outside: Path, distributions: Distributions) -> Venv:
    """A fresh virtualenv with only the wheel (and its dependencies) installed."""
    started = time.monotonic()
    venv = Venv.create(outside / "venv")
    seconds = venv.install(distributions.wheel)
    total = time.monotonic() - started
    WHEEL_REPORT["runtime install"] = f"{megabytes(venv.path)} MB, pip install {seconds:.0f} s ({total:.0f} s in all)"
    return venv


@pytest.fixture(scope="module")
def database_url(outside: Path) -> Iterator[str]:
    """A database of the site's own: PostgreSQL on the services pass, a SQLite file on the embedded one."""
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        WHEEL_REPORT["site database"] = "SQLite"
        yield f"sqlite:///{outside / 'site.sqlite3'}"
        return
    name = f"{db['NAME'].removeprefix('test_')}_wheel"
    server = {"host": db["HOST"] or "127.0.0.1", "port": db["PORT"] or 5432, "user": db["USER"]}
    with psycopg.connect(dbname="postgres", autocommit=True, **server) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    WHEEL_REPORT["site database"] = f"PostgreSQL ({name})"
    yield f"postgres://{server['user']}@{server['host']}:{server['port']}/{name}"
    with psycopg.connect(dbname="postgres", autocommit=True, **server) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def site(venv: Venv, outside: Path, database_url: str) -> Site:
    """The installed package, migrated, its static files collected and a superuser created."""
    home = outside / "site"
    home.mkdir()
    site = Site(venv=venv, home=home, database_url=database_url, broker_url="redis://127.0.0.1:1/0")
    site.django_admin("migrate", "--noinput")
    site.django_admin("collectstatic", "--noinput")
    site.django_admin("createsuperuser", "--noinput", "--username", ADMIN_USER, "--email", "admin@example.com")
    return site


@pytest.fixture(scope="module")
def server(site: Site, outside: Path) -> Iterator[Gunicorn]:
    server = Gunicorn(site, outside / "gunicorn.log").start()
    yield server
    server.stop()


@pytest.fixture
def browser(server: Gunicorn) -> Iterator[BehindTheProxy]:
    browser = BehindTheProxy(server.url)
    yield browser
    browser.close()


def admin_changelists() -> list[str]:
    """The admin's list page of every registered model, Terminus' own and the libraries' (users, tokens)."""
    return sorted(
        reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        for model in apps.get_models()
        if admin.site.is_registered(model)
    )


def test_the_wheel_and_the_sdist_hold_every_file_of_the_packages(distributions: Distributions) -> None:
    """Code, migrations, templates, static files: whatever is under project/, results/, tasks/ ships.

    Compared with the snapshot of the checkout they were built from (a file added meanwhile is not a miss).
    """
    sdist, wheel = distributions.sdist, distributions.wheel
    files = package_files(distributions.source)
    assert {"results/static/terminus/terminus.js", "results/templates/terminus/jobs.html"} <= files
    assert {path for path in files if path.startswith("results/migrations/")}
    assert sorted(files - sdist_files(sdist)) == []
    assert sorted(files - wheel_files(wheel)) == []
    assert not [name for name in wheel_files(wheel) if name.split("/")[0] in {"tests", "deploy", "docs", "var"}]


def test_the_installed_package_is_imported_from_the_venv_not_the_checkout(site: Site) -> None:
    result = site.run("python", "-c", "import project, results, tasks; print(results.__file__, tasks.__file__)")
    assert result.returncode == 0, result.stderr
    for path in result.stdout.split():
        assert Path(path).is_relative_to(site.venv.site_packages()), path


def test_the_runtime_install_brings_no_tooling(site: Site) -> None:
    """[project.dependencies] is what web, worker and beat import; the runner and the tools are extras."""
    tooling = ["honcho", "pytest", "ruff", "playwright", "schemathesis", "build"]
    code = f"import importlib.util as u; print(' '.join(m for m in {tooling!r} if u.find_spec(m)))"
    result = site.run("python", "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []


def test_check_deploy_is_clean_in_production_mode(site: Site) -> None:
    output = site.django_admin("check", "--deploy", "--fail-level", "WARNING")
    assert "System check identified no issues (0 silenced)." in output


def test_state_is_kept_under_the_working_directory_not_in_site_packages(site: Site) -> None:
    """Without TERMINUS_VAR_DIR, an installed package writes ./var, never into the venv."""
    assert (site.home / "var" / "static" / "terminus" / "terminus.js").is_file()
    assert not (site.venv.site_packages() / "var").exists()


def test_it_serves_every_page_signed_in_and_every_static_file_they_load(
    browser: BehindTheProxy, server: Gunicorn, distributions: Distributions
) -> None:
    browser.sign_in(ADMIN_USER, ADMIN_PASSWORD)
    pages = ["/jobs/", "/admin/", *admin_changelists(), "/api/docs/", "/api/redoc/", "/api/schema/"]
    assert "/admin/results/cronrun/" in pages
    answers = {page: browser.get(page) for page in pages}
    failed = {page: answer.status_code for page, answer in answers.items() if answer.status_code != 200}
    assert failed == {}, server.log()[-6000:]
    assets = {"/static/terminus/terminus.js"}
    for answer in answers.values():
        assets |= static_links(answer.text)
    assert "/static/terminus/jobs.js" in assets
    assert {asset: browser.get(asset).status_code for asset in sorted(assets)} == dict.fromkeys(sorted(assets), 200)
    script = browser.get("/static/terminus/terminus.js")
    assert script.headers["content-type"].startswith("text/javascript"), script.headers
    assert script.content == (distributions.source / "results/static/terminus/terminus.js").read_bytes()


def test_it_answers_the_public_pages_signed_out(browser: BehindTheProxy) -> None:
    assert browser.get("/api/docs/").status_code == 200
    assert browser.get("/admin/").status_code == 302  # to the sign-in form
    assert browser.get("/admin/login/").status_code == 200
    assert browser.get("/healthz").status_code == 200
