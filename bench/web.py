"""API and page measurements through the real WSGI app.

The project's WSGI app runs under gunicorn (gthread, 2 workers x 2 threads, as deploy/start-web.sh
runs it, ``DEBUG=false``) on a free port against the bench database; the client is httpx on the
same host, one keep-alive connection, requests one after another. Times are wall-clock per
request as the client sees them.

- **Single submit.** ``POST /api/jobs/`` with a ``diagnostics.sleep`` job (``seconds: 0``) as a
  tenant's API user (token auth), M requests; p50/p99. Every answer must be 202.
- **Bulk submit.** ``POST /api/jobs/bulk/`` with batches of B jobs (1,000 = ``TERMINUS_MAX_BULK``);
  jobs/s = jobs / summed request time, one client; then two clients at once (one per gunicorn
  worker), jobs / wall time. Afterwards every job must be recorded and published
  (``dispatched_at`` set). Nothing consumes these jobs: the benchmark measures submission only.
- **Server CPU.** user + system CPU of the gunicorn process group during each section, per
  request (single) or per 1,000 jobs (bulk): steadier than wall time on a shared machine.
- **Experiments.** With ``--web-experiments``, a second server runs the same app with candidate
  changes applied (bench/experiments.py, through bench/wsgi.py); requests alternate between the
  two servers, so both see the same machine.
- **Pages.** The job table is filled with the seeded rows (``bench.seed``: PostgreSQL's own
  ``INSERT … SELECT generate_series``, then ``VACUUM ANALYZE``). Each page is requested once to
  warm up, then R times; the figure is the median (min and max shown). Admin pages as a logged-in
  superuser (session cookie); API pages with a staff token and, for the tenant-scoped list, a
  tenant user's token.
"""

from __future__ import annotations

import re
import secrets
import statistics
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

from . import env, seed

_PASSWORD = secrets.token_urlsafe(16)


def ensure_users() -> tuple[Any, Any]:
    """(superuser, tenant user): the bench's own accounts, with API tokens and ten tenants."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from results.models import Membership, Tenant

    user_model = get_user_model()
    admin, _ = user_model.objects.get_or_create(
        username="bench-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    admin.set_password(_PASSWORD)
    admin.save()
    tenants = [Tenant.objects.get_or_create(name=f"bench-tenant-{i}")[0] for i in range(seed.TENANTS)]
    member, _ = user_model.objects.get_or_create(username="bench-tenant-user")
    Membership.objects.update_or_create(user=member, defaults={"tenant": tenants[0]})
    for user in (admin, member):
        Token.objects.get_or_create(user=user)
    return admin, member


def _token(user: Any) -> str:
    from rest_framework.authtoken.models import Token

    return Token.objects.get(user=user).key


def _timed(client: Any, method: str, url: str, **kwargs: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    response = client.request(method, url, **kwargs)
    return (time.perf_counter() - started) * 1000, response


def _expect(response: Any, status: int, what: str) -> None:
    if response.status_code != status:
        raise RuntimeError(f"{what}: HTTP {response.status_code} (expected {status}): {response.text[:500]}")


# ---------------------------------------------------------------------------------------------
# Submitting through the API
# ---------------------------------------------------------------------------------------------
def api(servers: dict[str, env.Web], args: Any) -> dict[str, Any]:
    """Single and bulk submits; with several servers (an experiment), requests alternate between them."""
    import httpx

    from results.models import Job

    from .common import percentile

    env.truncate()
    _, member = ensure_users()
    single_n = 30 if args.quick else 300
    batches, batch_size = (4, 500) if args.quick else (20, 1000)
    headers = {"Authorization": f"Token {_token(member)}"}
    body = {"type": "diagnostics.sleep", "payload": {"seconds": 0}}
    items = [body] * batch_size
    clients = {label: httpx.Client(base_url=web.url, headers=headers, timeout=120) for label, web in servers.items()}
    single: dict[str, list[float]] = {label: [] for label in servers}
    bulk: dict[str, list[float]] = {label: [] for label in servers}
    bulk2: dict[str, float] = {}
    try:
        for client in clients.values():  # warm-up: both gunicorn workers import, connect and cache
            for _ in range(10):
                _expect(client.post("/api/jobs/", json=body), 202, "warm-up submit")
            _expect(client.post("/api/jobs/bulk/", json={"jobs": items[:50]}), 202, "warm-up bulk")
        labels = list(servers)
        cpu = {label: server.cpu_total() for label, server in servers.items()}
        for i in range(single_n):
            for label in rotated(labels, i):
                ms, response = _timed(clients[label], "POST", "/api/jobs/", json=body)
                _expect(response, 202, "single submit")
                single[label].append(ms)
        single_cpu = {label: server.cpu_total() - cpu[label] for label, server in servers.items()}
        before = Job.objects.count()
        cpu = {label: server.cpu_total() for label, server in servers.items()}
        for i in range(batches):
            for label in rotated(labels, i):
                ms, response = _timed(clients[label], "POST", "/api/jobs/bulk/", json={"jobs": items})
                _expect(response, 202, "bulk submit")
                bulk[label].append(ms)
        bulk_cpu = {label: server.cpu_total() - cpu[label] for label, server in servers.items()}
        # Two clients at once (one per gunicorn worker): the server's throughput, not one client's.
        for i in range(2):
            for label in rotated(labels, i):
                bulk2.setdefault(label, 0.0)
                bulk2[label] += _concurrent_bulk(servers[label].url, headers, items, batches // 2)
    finally:
        for client in clients.values():
            client.close()
    recorded = Job.objects.count() - before
    undispatched = Job.objects.filter(dispatched_at__isnull=True).count()
    env.redis().delete("default")  # the submitted jobs' messages: nothing consumes them here
    total = (batches + 2 * 2 * (batches // 2)) * batch_size * len(servers)
    if recorded != total or undispatched:
        raise RuntimeError(f"bulk: {recorded} of {total} jobs recorded, {undispatched} not published")
    out: dict[str, Any] = {}
    for label in servers:
        key = "" if label == "baseline" else f" +{label}"
        out[f"single{key}"] = {
            "n": single_n,
            "p50_ms": percentile(single[label], 50),
            "p99_ms": percentile(single[label], 99),
            "mean_ms": statistics.fmean(single[label]),
            "server_cpu_ms": single_cpu[label] * 1000 / single_n,
        }
        out[f"bulk{key}"] = {
            "clients": 1,
            "batches": batches,
            "batch_size": batch_size,
            "jobs_per_s": batches * batch_size / (sum(bulk[label]) / 1000),
            "batch_p50_ms": percentile(bulk[label], 50),
            "batch_max_ms": max(bulk[label]),
            "server_cpu_ms_per_1000_jobs": bulk_cpu[label] * 1e6 / (batches * batch_size),
        }
        out[f"bulk 2 clients{key}"] = {
            "clients": 2,
            "batches": 2 * 2 * (batches // 2),
            "batch_size": batch_size,
            "jobs_per_s": 2 * 2 * (batches // 2) * batch_size / bulk2[label],
        }
    return out


def _concurrent_bulk(url: str, headers: dict[str, str], items: list[Any], per_client: int) -> float:
    """Two clients posting ``per_client`` batches each at the same time; seconds until both finished."""
    import threading

    import httpx

    errors: list[str] = []

    def post_batches() -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
            for _ in range(per_client):
                response = client.post("/api/jobs/bulk/", json={"jobs": items})
                if response.status_code != 202:
                    errors.append(f"HTTP {response.status_code}: {response.text[:300]}")

    threads = [threading.Thread(target=post_batches) for _ in range(2)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"bulk (2 clients): {errors[0]}")
    return time.perf_counter() - started


def rotated(items: list[str], i: int) -> list[str]:
    shift = i % len(items)
    return items[shift:] + items[:shift]


# ---------------------------------------------------------------------------------------------
# Pages on a large table
# ---------------------------------------------------------------------------------------------
def _admin_login(client: Any) -> None:
    response = client.get("/admin/login/", params={"next": "/admin/"})
    _expect(response, 200, "admin login form")
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', response.text)
    if not match:
        raise RuntimeError("admin login form without a CSRF token")
    response = client.post(
        "/admin/login/?next=/admin/",
        data={"csrfmiddlewaretoken": match.group(1), "username": "bench-admin", "password": _PASSWORD},
    )
    _expect(response, 302, "admin login")


def _page_urls(staff_client: Any) -> dict[str, tuple[str, str]]:
    """name -> (client, path): the pages to time, with ids and cursors taken from the data."""
    from django.utils import timezone

    from results.models import Job

    middle, correlation = Job.objects.order_by("-created_at").values_list("id", "correlation_id")[
        Job.objects.count() // 2
    ]
    first = staff_client.get("/api/jobs/")
    _expect(first, 200, "API list")
    next_url = first.json()["next"]
    today = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    week = urlencode({"created_at__gte": str(today - timedelta(days=7)), "created_at__lt": str(today + timedelta(1))})
    return {
        "admin list": ("admin", "/admin/results/job/"),
        "admin list page 2": ("admin", "/admin/results/job/?p=2"),
        "admin filter status=failed": ("admin", "/admin/results/job/?status__exact=failed"),
        "admin filter type+status": ("admin", "/admin/results/job/?status__exact=failed&type=webhook.deliver"),
        "admin filter past 7 days": ("admin", f"/admin/results/job/?{week}"),
        "admin list page 200": ("admin", "/admin/results/job/?p=200"),
        "admin search by id": ("admin", f"/admin/results/job/?q={middle}"),
        "admin search by correlation id": ("admin", f"/admin/results/job/?q={correlation}"),
        "admin search, no match": ("admin", "/admin/results/job/?q=no-such-key"),
        "admin change page": ("admin", f"/admin/results/job/{middle}/change/"),
        "API list": ("staff", "/api/jobs/"),
        "API list next cursor": ("staff", f"{urlsplit(next_url).path}?{urlsplit(next_url).query}"),
        "API filter status=failed": ("staff", "/api/jobs/?status=failed"),
        "API filter type+status": ("staff", "/api/jobs/?type=webhook.deliver&status=failed"),
        "API filter open": ("staff", "/api/jobs/?status=queued,running,retrying"),
        "API filter created in a day": (
            "staff",
            "/api/jobs/?"
            + urlencode(
                {
                    "created_after": (today - timedelta(days=3)).isoformat(),
                    "created_before": (today - timedelta(days=2)).isoformat(),
                }
            ),
        ),
        "API list (tenant user)": ("tenant", "/api/jobs/"),
        "API poll": ("staff", f"/api/jobs/{middle}/"),
    }


def pages(web: env.Web, args: Any) -> dict[str, Any]:
    import httpx

    admin, member = ensure_users()
    print(f"  seeding {args.rows:,} jobs", flush=True)
    info: dict[str, Any] = {"seed": seed.jobs(args.rows)}
    repeats = 3 if args.quick else 7
    clients = {
        "admin": httpx.Client(base_url=web.url, timeout=120),
        "staff": httpx.Client(base_url=web.url, headers={"Authorization": f"Token {_token(admin)}"}, timeout=120),
        "tenant": httpx.Client(base_url=web.url, headers={"Authorization": f"Token {_token(member)}"}, timeout=120),
    }
    try:
        _admin_login(clients["admin"])
        results: dict[str, Any] = {}
        for name, (who, url) in _page_urls(clients["staff"]).items():
            client = clients[who]
            _expect(client.get(url), 200, name)  # warm-up
            times = []
            size = 0
            for _ in range(repeats):
                ms, response = _timed(client, "GET", url)
                _expect(response, 200, name)
                times.append(ms)
                size = len(response.content)
            results[name] = {
                "url": url if len(url) < 90 else url[:87] + "...",
                "median_ms": statistics.median(times),
                "min_ms": min(times),
                "max_ms": max(times),
                "n": repeats,
                "bytes": size,
            }
            print(f"  page {name:28s} {results[name]['median_ms']:7.1f} ms", flush=True)
    finally:
        for client in clients.values():
            client.close()
    info["pages"] = results
    return info


def run(args: Any, results: dict[str, Any]) -> None:
    servers = {"baseline": env.Web(log_level=args.log_level)}
    if args.web_experiment_list and "api" in args.phases:
        exps = ",".join(args.web_experiment_list)
        servers["+".join(args.web_experiment_list)] = env.Web(
            log_level=args.log_level, app="bench.wsgi:application", tag="web-experiment", BENCH_EXPERIMENTS=exps
        )
    try:
        for server in servers.values():
            server.wait_ready()
        if "api" in args.phases:
            results["api"] = api(servers, args)
            for name, figures in results["api"].items():
                if name.startswith("single"):
                    print(f"  API {name}: p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms", flush=True)
                else:
                    print(f"  API {name}: {figures['jobs_per_s']:,.0f} jobs/s", flush=True)
        if "pages" in args.phases:
            results["pages"] = pages(servers["baseline"], args)
    finally:
        for server in servers.values():
            server.stop()
