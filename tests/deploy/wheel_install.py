"""The package as users take it: build the sdist and the wheel, install the wheel into a fresh
virtualenv outside the checkout, run it in production mode and talk to it as a browser behind the
TLS proxy would. Used by tests/deploy/test_package.py; deploy/Dockerfile does the same in its stages.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path

import httpx

from tests.deploy.helpers import ROOT
from tests.helpers import terminate_group, wait_for

#: The import packages the distribution ships ([tool.setuptools.packages.find] in pyproject.toml).
PACKAGES = ("project", "results", "tasks")
#: What the image's build stage copies from the repository (deploy/Dockerfile), and so what the package is built from.
BUILD_INPUTS = ("pyproject.toml", "README.md", *PACKAGES)
#: Figures a run measured (install time, venv size), printed in the terminal summary (conftest).
WHEEL_REPORT: dict[str, str] = {}


@dataclass(frozen=True)
class Distributions:
    source: Path  # the snapshot of the checkout they were built from
    sdist: Path
    wheel: Path


def build_distributions(workdir: Path) -> Distributions:
    """The sdist and the wheel, as ``python -m build`` makes them: the wheel is built *from the sdist*,
    so a file the sdist lacks is missing from the wheel too.

    They are built from a copy of what deploy/Dockerfile's build stage copies, not in the checkout:
    a ``terminus.egg-info`` left there by ``pip install -e`` lists files setuptools would add to the
    sdist anyway, which hides a missing package-data rule (and the build would write into the tree).
    """
    source = workdir / "source"
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    outdir = workdir / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(outdir), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    (sdist,) = outdir.glob("terminus-*.tar.gz")
    (wheel,) = outdir.glob("terminus-*.whl")
    return Distributions(source=source, sdist=sdist, wheel=wheel)


def package_files(root: Path) -> set[str]:
    """Every file of the packages in a source tree (code, templates, static files, migrations, anything
    added later), as a path inside an archive: ``results/static/terminus/terminus.js``."""
    return {
        path.relative_to(root).as_posix()
        for package in PACKAGES
        for path in (root / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {name for name in archive.namelist() if not name.endswith("/")}


def sdist_files(sdist: Path) -> set[str]:
    """The sdist's files without its top folder (``terminus-0.1.0/``)."""
    with tarfile.open(sdist) as archive:
        return {member.name.split("/", 1)[1] for member in archive.getmembers() if member.isfile()}


def megabytes(path: Path) -> int:
    """What a folder weighs on disk (``du -sm``)."""
    return int(subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


@dataclass
class Venv:
    """A virtualenv of its own, made by the interpreter that runs the tests."""

    path: Path

    def bin(self, name: str) -> str:
        return str(self.path / "bin" / name)

    @classmethod
    def create(cls, path: Path) -> Venv:
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
        return cls(path)

    def install(self, wheel: Path) -> float:
        """``pip install <wheel>`` (dependencies from the index or pip's cache); the seconds it took."""
        started = time.monotonic()
        result = subprocess.run(
            [self.bin("pip"), "install", "--quiet", "--disable-pip-version-check", str(wheel)],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
            cwd=self.path.parent,
        )
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        return time.monotonic() - started

    def site_packages(self) -> Path:
        (path,) = self.path.glob("lib/python*/site-packages")
        return path


@dataclass
class Site:
    """The installed package run in production mode from a folder outside the checkout."""

    venv: Venv
    home: Path  # the working directory of every process (./var lands here)
    database_url: str
    broker_url: str
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(50))

    def env(self) -> dict[str, str]:
        """Only what a deploy sets: nothing of the test run (no PYTHONPATH, no checkout) leaks in."""
        return {
            "PATH": f"{self.venv.path / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "TERMINUS_ENV": "production",
            "SECRET_KEY": self.secret_key,
            "DATABASE_URL": self.database_url,
            "CELERY_BROKER_URL": self.broker_url,
            "ALLOWED_HOSTS": "127.0.0.1",
            "TERMINUS_METRICS_TOKEN": "wheel-test-metrics-token",
            "DJANGO_SUPERUSER_PASSWORD": ADMIN_PASSWORD,
        }

    def run(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """A command of the venv (``django-admin``, ``python``) in the site's folder."""
        return subprocess.run(
            [self.venv.bin(argv[0]), *argv[1:]],
            cwd=self.home,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def django_admin(self, *args: str) -> str:
        result = self.run("django-admin", *args)
        assert result.returncode == 0, f"django-admin {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result.stdout + result.stderr


ADMIN_USER = "admin"
ADMIN_PASSWORD = "wheel test: correct horse battery staple"


class Gunicorn:
    """The venv's gunicorn serving ``project.wsgi`` on a free loopback port, from the site's folder."""

    def __init__(self, site: Site, log_path: Path) -> None:
        self.site = site
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> Gunicorn:
        argv = [
            self.site.venv.bin("gunicorn"),
            "project.wsgi:application",
            "--bind",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--threads",
            "4",
            "--no-control-socket",
            "--access-logfile",
            "-",
            "--error-logfile",
            "-",
        ]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=self.site.home,
                env=self.site.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for(
                lambda: not self.alive() or ("Listening at: http://" in self.log() and "Booting worker" in self.log()),
                timeout=60,
                what="gunicorn to listen",
            )
            assert self.alive(), f"gunicorn exited at start:\n{self.log()}"
            match = re.search(r"Listening at: (http://127\.0\.0\.1:\d+)", self.log())
            assert match, self.log()
        except BaseException:
            self.stop()
            raise
        self.url = match.group(1)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        terminate_group(self.proc, grace=15)


class BehindTheProxy:
    """A browser behind the site's TLS proxy: every request says https (``X-Forwarded-Proto``, which
    production settings trust), and the ``Secure`` cookies the site sets go back over loopback HTTP."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.client = httpx.Client(base_url=base_url, timeout=30, follow_redirects=False)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        headers = {"X-Forwarded-Proto": "https", **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        response = self.client.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]
        self.client.cookies.clear()  # its jar would never send Secure cookies over http: ours does
        for header in response.headers.get_list("set-cookie"):
            for name, morsel in SimpleCookie(header).items():
                self.cookies[name] = morsel.value
        return response

    def get(self, path: str) -> httpx.Response:
        return self.request("GET", path)

    def sign_in(self, username: str, password: str) -> None:
        """The admin's sign-in form, CSRF token and Origin check included; the session serves /jobs/ too."""
        form = self.get("/admin/login/?next=/admin/")
        assert form.status_code == 200, form.text[:2000]
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
        assert token, form.text[:2000]
        origin = self.base_url.replace("http://", "https://")
        answer = self.request(
            "POST",
            "/admin/login/?next=/admin/",
            data={"username": username, "password": password, "csrfmiddlewaretoken": token.group(1), "next": "/admin/"},
            headers={"Origin": origin, "Referer": f"{origin}/admin/login/"},
        )
        assert answer.status_code == 302, f"sign-in refused ({answer.status_code}):\n{answer.text[:2000]}"
        assert answer.headers["location"] == "/admin/", answer.headers
        assert "sessionid" in self.cookies

    def close(self) -> None:
        self.client.close()


def static_links(html: str) -> set[str]:
    """Every ``/static/…`` file a page loads (scripts, styles, icons)."""
    return set(re.findall(r"""(?:src|href)=["'](/static/[^"'?#]+)""", html))
