"""The table with ratios and PASS/FAIL per target, and bench/RESULTS.md."""

from __future__ import annotations

import os
import platform
import statistics
import time
from importlib import metadata
from typing import Any

from . import env

TARGETS = {
    "throughput_vs_dcr": 1.5,  # Terminus >= 1.5 x Celery + django-celery-results (persistent connections)
    "throughput_vs_bare": 0.8,  # Terminus >= 0.8 x bare Celery
    "p50_over_bare_ms": 2.0,  # Terminus p50 <= bare p50 + 2 ms
    "bulk_jobs_per_s": 5000,
    "page_ms": 300,
    "cleanup_rows_per_s": 20_000,
    "cleanup_longest_statement_ms": 1000,  # "without long locks": no statement (so no lock) held longer than 1 s
}

PACKAGES = (
    "celery", "kombu", "billiard", "redis", "Django", "django-celery-results", "djangorestframework", "psycopg",
    "gunicorn", "pydantic",
)  # fmt: skip

LABELS = {
    "bare": "bare Celery (no result backend)",
    "dcr": "Celery + django-celery-results (STARTED + SUCCESS)",
    "dcr_nostarted": "Celery + django-celery-results, no STARTED",
    "dcr_noreuse": "Celery + django-celery-results, connection per task",
    "terminus": "Terminus tracked job",
}


# ---------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------
def load() -> dict[str, Any]:
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def machine() -> dict[str, Any]:
    import psutil

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    except OSError:
        pass
    versions = {"Python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "-"
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu": cpu,
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions,
        **load(),
    }
    try:
        info["versions"]["redis-server"] = env.redis().info("server")["redis_version"]
    except Exception as exc:  # noqa: BLE001 - report what could not be read
        info["versions"]["redis-server"] = f"? ({exc})"
    try:
        import psycopg

        with psycopg.connect(f"{env.PG_URL}/postgres") as conn:
            info["versions"]["PostgreSQL"] = conn.execute("SHOW server_version").fetchone()[0]
            rows = conn.execute(
                "SELECT name, setting, unit FROM pg_settings WHERE name IN "
                "('fsync', 'synchronous_commit', 'shared_buffers', 'autovacuum', 'max_connections')"
            ).fetchall()
            info["postgres_settings"] = {name: f"{value}{' x ' + unit if unit else ''}" for name, value, unit in rows}
    except Exception as exc:  # noqa: BLE001
        info["versions"]["PostgreSQL"] = f"? ({exc})"
    return info


def code_state() -> dict[str, Any]:
    """The commit measured and the files that differ from it (the figures are of the working tree)."""
    import subprocess

    def git(*argv: str) -> str:
        try:
            return subprocess.run(
                ["git", *argv],  # noqa: S607 - git from PATH, as a developer runs it
                cwd=env.ROOT,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout.rstrip("\n")
        except OSError:
            return ""

    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD").strip() or "?", "changed": changed}


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
def label(variant: str) -> str:
    base, _, exps = variant.partition("+")
    return LABELS.get(base, base) + (f" + experiment {exps}" if exps else "")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _spread(values: list[float], fmt: str = "{:.0f}") -> str:
    if len(values) < 2:
        return ""
    return f" ({fmt.format(min(values))}-{fmt.format(max(values))})"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def worker_rows(results: dict[str, Any]) -> tuple[list[list[str]], dict[str, float]]:
    rows: list[list[str]] = []
    figures: dict[str, float] = {}
    throughput = results.get("throughput", {})
    latency = results.get("latency", {})
    names = list(dict.fromkeys([*throughput, *latency]))
    names.sort(key=lambda v: (list(LABELS).index(v.split("+")[0]) if v.split("+")[0] in LABELS else 99, v))
    for variant in names:
        runs = throughput.get(variant, [])
        rate = [r["jobs_per_s"] for r in runs]
        cpu = [r["cpu_ms_per_job"] for r in runs]
        commits = [r["commits_per_job"] for r in runs]
        sessions = [r["sessions_opened"] for r in runs]
        lat = latency.get(variant, [])
        samples = [s for r in lat for s in r["samples_ms"]]
        from .common import percentile

        p50, p99 = percentile(samples, 50), percentile(samples, 99)
        if rate:
            figures[f"{variant}.rate"] = _median(rate)
        if samples:
            figures[f"{variant}.p50"] = p50
            figures[f"{variant}.p99"] = p99
        rows.append(
            [
                label(variant),
                f"{_median(rate):,.0f}{_spread(rate)}" if rate else "-",
                f"{_median(cpu):.2f}" if cpu else "-",
                f"{_median(commits):.2f}" if commits else "-",
                f"{_median(sessions):.0f}" if sessions else "-",
                f"{p50:.2f}{_spread([r['p50_ms'] for r in lat], '{:.2f}')}" if samples else "-",
                f"{p99:.2f}" if samples else "-",
            ]
        )
    return rows, figures


def render(results: dict[str, Any], args: Any) -> tuple[str, dict[str, bool]]:
    """The plain-text table printed at the end (also embedded in RESULTS.md) and the verdicts."""
    lines: list[str] = []
    verdicts: dict[str, bool] = {}
    rows, figures = worker_rows(results)
    if rows:
        header = ["variant", "jobs/s (min-max)", "CPU ms/job", "xacts/job", "conns", "p50 ms (runs)", "p99 ms"]
        lines += _table(header, rows)
        lines.append("")
    checks: list[list[str]] = []
    term, dcr, bare = figures.get("terminus.rate"), figures.get("dcr.rate"), figures.get("bare.rate")
    if term and dcr:
        ratio = term / dcr
        verdicts["throughput_vs_dcr"] = ratio >= TARGETS["throughput_vs_dcr"]
        checks.append(["Terminus / Celery+dcr throughput", f"{ratio:.2f}x", ">= 1.5x", _verdict(ratio >= 1.5)])
    if term and bare:
        ratio = term / bare
        verdicts["throughput_vs_bare"] = ratio >= TARGETS["throughput_vs_bare"]
        checks.append(["Terminus / bare Celery throughput", f"{ratio:.2f}x", ">= 0.8x", _verdict(ratio >= 0.8)])
    tp50, bp50 = figures.get("terminus.p50"), figures.get("bare.p50")
    if tp50 is not None and bp50 is not None and tp50 == tp50 and bp50 == bp50:
        over = tp50 - bp50
        verdicts["p50"] = over <= TARGETS["p50_over_bare_ms"]
        checks.append(["Terminus p50 - bare p50", f"{over:+.2f} ms", "<= +2 ms", _verdict(verdicts["p50"])])
    for variant in [v for v in figures if v.startswith("terminus+") and v.endswith(".rate")]:
        name = variant[: -len(".rate")]
        if term and figures.get(variant):
            checks.append([f"experiment {name[9:]}: throughput vs Terminus", f"{figures[variant] / term:.2f}x", "", ""])
    for variant in [v for v in figures if v.startswith("terminus+") and v.endswith(".p50")]:
        name = variant[: -len(".p50")]
        if tp50 is not None:
            checks.append([f"experiment {name[9:]}: p50 vs Terminus", f"{figures[variant] - tp50:+.2f} ms", "", ""])
    api = results.get("api", {})
    for name, figures_ in api.items():
        if name.startswith("single"):
            checks.append(
                [
                    f"API {name} submit p50 / p99 (server CPU)",
                    f"{figures_['p50_ms']:.1f} / {figures_['p99_ms']:.1f} ms ({figures_['server_cpu_ms']:.1f} ms)",
                    "",
                    "",
                ]
            )
        else:
            ok = figures_["jobs_per_s"] >= TARGETS["bulk_jobs_per_s"]
            if "+" not in name:
                verdicts[f"api {name}"] = ok
            checks.append(
                [
                    f"API {name} (POST /api/jobs/bulk/)",
                    f"{figures_['jobs_per_s']:,.0f} jobs/s",
                    ">= 5,000",
                    _verdict(ok),
                ]
            )
    pages = results.get("pages", {})
    for name, page in pages.get("pages", {}).items():
        ok = page["median_ms"] < TARGETS["page_ms"]
        verdicts[f"page:{name}"] = ok
        checks.append(
            [f"page {name}", f"{page['median_ms']:.0f} ms (max {page['max_ms']:.0f})", "< 300 ms", _verdict(ok)]
        )
    cleanup = results.get("cleanup")
    if cleanup:
        if cleanup.get("rows_per_s") is not None:
            ok = cleanup["rows_per_s"] >= TARGETS["cleanup_rows_per_s"]
            label = "cleanup" + ("" if cleanup.get("product") else " (bench reference, product pending)")
            verdicts["cleanup_rate"] = ok if cleanup.get("product") else False
            checks.append([label, f"{cleanup['rows_per_s']:,.0f} rows/s", ">= 20,000", _verdict(ok)])
            longest = cleanup.get("longest_statement_ms")
            if longest is not None:
                ok = longest <= TARGETS["cleanup_longest_statement_ms"]
                verdicts["cleanup_locks"] = ok if cleanup.get("product") else False
                checks.append(
                    [
                        "cleanup longest statement / xact",
                        f"{longest:.0f} / {cleanup.get('longest_xact_ms', float('nan')):.0f} ms",
                        "<= 1,000 ms",
                        _verdict(ok),
                    ]
                )
        else:
            verdicts["cleanup_rate"] = False
            checks.append(["cleanup", cleanup.get("status", "not measured"), ">= 20,000 rows/s", "PENDING"])
    if checks:
        lines += _table(["target", "measured", "target", "verdict"], checks)
    return "\n".join(lines), verdicts


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*header), fmt.format(*["-" * w for w in widths])] + [fmt.format(*r) for r in rows]


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def markdown(results: dict[str, Any], args: Any, table: str) -> str:
    from . import workers

    m = results.get("machine", {})
    after = results.get("machine_after", {})
    v = m.get("versions", {})
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `python -m bench.run {' '.join(_argv(args))}`".rstrip()
        + f" on {m.get('time', '?')}"
        + (" — **the run failed; figures are partial**" if results.get("failed") else "")
        + ".",
        "",
        "## Machine",
        "",
        f"- {m.get('nproc')} CPUs ({m.get('cpu')}), {m.get('ram_gib')} GiB RAM, {m.get('os')}",
        f"- load average at start {m.get('loadavg')}, at end {after.get('loadavg')}"
        " (1/5/15 min; above ~0.5 on 2 cores means other work shared the machine and the figures are noisy)",
        "- " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "- PostgreSQL settings: " + ", ".join(f"{k}={val}" for k, val in m.get("postgres_settings", {}).items()),
        f"- code: commit {results.get('code', {}).get('commit', '?')}"
        + (
            f" with uncommitted changes to {', '.join(results['code']['changed'])}"
            if results.get("code", {}).get("changed")
            else " (clean)"
        ),
        "",
        "## Summary",
        "",
        "```",
        table,
        "```",
        "",
    ]
    lines += [
        'Candidate hot-path changes and what each measured: bench/README.md ("Findings on the hot path").',
        "",
    ]
    lines += _details(results)
    lines += ["## Method", "", "### Workers", "", workers.__doc__.split("\n\n", 1)[1].strip(), ""]
    lines += [
        f"Worker command, the same for every variant: `celery -A project worker -P prefork -c 2 -Q <bench queues> "
        f"-I bench.celery_tasks --without-gossip --without-mingle --without-heartbeat`, with the project's settings "
        f"(acks_late, prefetch multiplier 1, reject_on_worker_lost, max tasks per child 1000), "
        f"`CELERY_DB_REUSE_MAX=1000` (persistent connections; `dcr_noreuse` sets 0), `DEBUG=false`, "
        f"`LOG_LEVEL={args.log_level}`. N = {args.jobs} jobs per drain, {args.repeats} repeat(s) in rotating "
        f"order after one warm-up drain per variant; latency over {args.latency_jobs} sequential jobs per repeat "
        "(p50/p99 over all repeats' samples). Figures: median over repeats (min-max).",
        "",
    ]
    from . import cleanup, web

    lines += ["### API and pages", "", web.__doc__.split("\n\n", 1)[1].strip(), ""]
    lines += ["### Cleanup", "", cleanup.__doc__.split("\n\n", 1)[1].strip(), ""]
    return "\n".join(lines) + "\n"


def _argv(args: Any) -> list[str]:
    out = []
    if getattr(args, "quick", False):
        out.append("--quick")
    if args.phases and len(args.phases) < 5:
        out.append(f"--only {','.join(args.phases)}")
    return out


def _details(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    throughput = results.get("throughput", {})
    if throughput:
        lines += ["## Worker runs (every repeat)", ""]
        rows = []
        for variant, runs in throughput.items():
            for i, r in enumerate(runs, 1):
                db_cpu = r.get("db_cpu_ms_per_job")
                rows.append(
                    [
                        variant, i, r["jobs"], f"{r['seconds']:.2f}", f"{r['jobs_per_s']:,.0f}",
                        f"{r['cpu_ms_per_job']:.2f}", f"{r.get('main_cpu_ms_per_job', 0):.2f}",
                        f"{r.get('child_cpu_ms_per_job', 0):.2f}", "-" if db_cpu is None else f"{db_cpu:.2f}",
                        f"{r['commits_per_job']:.2f}", r["sessions_opened"], f"{r['enqueue_jobs_per_s']:,.0f}",
                    ]
                )  # fmt: skip
        lines += _md_table(
            [
                "variant",
                "run",
                "jobs",
                "drain s",
                "jobs/s",
                "worker CPU ms/job",
                "main",
                "pool",
                "PostgreSQL CPU ms/job",
                "xacts/job",
                "conns opened",
                "enqueue jobs/s",
            ],
            rows,
        )
        lines.append("")
    latency = results.get("latency", {})
    if latency:
        rows = [
            [
                variant,
                i,
                r["n"],
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['mean_ms']:.2f}",
                f"{r['submit_p50_ms']:.2f}",
            ]
            for variant, runs in latency.items()
            for i, r in enumerate(runs, 1)
        ]
        lines += _md_table(["variant", "run", "jobs", "p50 ms", "p99 ms", "mean ms", "submit call p50 ms"], rows)
        lines.append("")
    api = results.get("api", {})
    if api:
        lines += ["## API", ""]
        for key, value in api.items():
            lines.append(f"- {key}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in value.items() if k != "samples_ms"))
        lines.append("")
    pages = results.get("pages", {})
    if pages:
        lines += ["## Pages on the large table", ""]
        lines += [f"- {k}: {_fmt(v)}" for k, v in pages.items() if k != "pages"]
        rows = [
            [
                name,
                p["url"],
                f"{p['median_ms']:.1f}",
                f"{p['min_ms']:.1f}",
                f"{p['max_ms']:.1f}",
                p["n"],
                p.get("bytes", ""),
            ]
            for name, p in pages.get("pages", {}).items()
        ]
        lines += ["", *_md_table(["page", "request", "median ms", "min ms", "max ms", "n", "bytes"], rows), ""]
    cleanup = results.get("cleanup")
    if cleanup:
        lines += ["## Cleanup", ""]
        lines += [f"- {k}: {_fmt(v)}" for k, v in cleanup.items()]
        lines.append("")
    return lines


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def rerender(raw: str, out: str) -> None:
    """Write the Markdown report again from a run's raw JSON (``python -m bench.report raw.json out.md``)."""
    import ast
    import json
    from argparse import Namespace
    from pathlib import Path

    results = json.loads(Path(raw).read_text())
    stored = results.get("args", {})

    def value(key: str, default: Any) -> Any:
        try:
            return ast.literal_eval(stored[key])
        except (KeyError, ValueError, SyntaxError):
            return stored.get(key, default)

    args = Namespace(
        quick=value("quick", False),
        phases=value("phases", []),
        log_level=stored.get("log_level", "WARNING"),
        jobs=value("jobs", "?"),
        repeats=value("repeats", "?"),
        latency_jobs=value("latency_jobs", "?"),
    )
    table, _ = render(results, args)
    Path(out).write_text(markdown(results, args, table))
    print(table)


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3:
        sys.exit("usage: python -m bench.report RESULTS.json RESULTS.md")
    rerender(sys.argv[1], sys.argv[2])
