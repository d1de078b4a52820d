"""``python -m bench.run``: Terminus against bare Celery and django-celery-results, side by side.

    python -m bench.run                      # the full benchmark (make bench); writes bench/RESULTS.md
    python -m bench.run --quick              # ~1-minute smoke with small N
    python -m bench.run --jobs 2000 --repeats 3 --only throughput,latency

Starts its own workers and web server on its own PostgreSQL database (``terminus_bench``) and
Redis database (10), and stops every process it started, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from . import env

PHASES = ("throughput", "latency", "api", "pages", "cleanup")
BASE_VARIANTS = ("bare", "dcr", "terminus")
EXTRA_VARIANTS = ("dcr_nostarted",)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small N everywhere: a ~1-minute smoke run")
    parser.add_argument("--jobs", type=int, help="jobs per drain run (default 10000; quick 300)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats of each variant (default 3; quick 1)")
    parser.add_argument("--latency-jobs", type=int, help="sequential jobs per latency run (default 200; quick 30)")
    parser.add_argument("--rows", type=int, help="rows for the page and cleanup tables (default 1000000)")
    parser.add_argument("--only", default=",".join(PHASES), help=f"comma-separated phases: {', '.join(PHASES)}")
    parser.add_argument(
        "--variants",
        default=None,
        help=(
            "worker variants; NAME+experiment measures a candidate change, e.g. terminus+no-record-writes "
            f"(default {','.join(BASE_VARIANTS + EXTRA_VARIANTS)}; quick {','.join(BASE_VARIANTS)})"
        ),
    )
    parser.add_argument(
        "--no-reuse-variant",
        action="store_true",
        help="also measure django-celery-results with CELERY_DB_REUSE_MAX unset (a connection per task)",
    )
    parser.add_argument(
        "--web-experiments",
        default="",
        help="candidate changes (bench/experiments.py) for a second web server measured against the first",
    )
    parser.add_argument(
        "--cleanup-experiments",
        default="",
        help="candidate changes applied to the cleanup call (bench/experiments.py), e.g. cleanup-keyset",
    )
    parser.add_argument(
        "--cleanup-batch",
        type=int,
        default=None,
        help="TERMINUS_CLEANUP_BATCH for the cleanup call (default: settings)",
    )
    parser.add_argument("--log-level", default="WARNING", help="LOG_LEVEL of the workers and the web server")
    parser.add_argument("--results", type=Path, help="where to write the Markdown report")
    parser.add_argument("--json", type=Path, help="where to write the raw figures (default var/bench/results.json)")
    parser.add_argument("--cleanup-entry", default=None, help="module:function to call for cleanup (auto-detected)")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a target is missed (default: only on errors)"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.jobs = args.jobs or (300 if quick else 10_000)
    args.repeats = args.repeats or (1 if quick else 3)
    args.latency_jobs = args.latency_jobs or (30 if quick else 200)
    args.rows = args.rows or (20_000 if quick else 1_000_000)
    args.phases = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(args.phases) - set(PHASES))
    if unknown:
        parser.error(f"unknown phase(s) {unknown}; known: {', '.join(PHASES)}")
    variants = args.variants or ",".join(BASE_VARIANTS if quick else BASE_VARIANTS + EXTRA_VARIANTS)
    args.variant_list = [v.strip() for v in variants.split(",") if v.strip()]
    if args.no_reuse_variant:
        args.variant_list.append("dcr_noreuse")
    try:
        for name in args.variant_list:
            base, _ = split_variant(name)
            if base not in (*BASE_VARIANTS, *EXTRA_VARIANTS, "dcr_noreuse"):
                parser.error(f"unknown variant {name!r}")
        args.web_experiment_list = experiments_parse(args.web_experiments)
        args.cleanup_experiment_list = experiments_parse(args.cleanup_experiments)
    except ValueError as exc:
        parser.error(str(exc))
    full = not quick and set(args.phases) == set(PHASES)
    if args.results is None:
        args.results = (env.ROOT / "bench" / "RESULTS.md") if full else (env.VAR / "RESULTS-partial.md")
    args.json = args.json or (env.VAR / ("results.json" if full else "results-partial.json"))
    return args


def experiments_parse(value: str) -> list[str]:
    from . import experiments

    return experiments.parse(value)


def setup_django(log_level: str) -> None:
    env.configure_this_process(log_level=log_level)
    env.ensure_database()
    env.lock_database()
    import django

    django.setup()
    import bench.celery_tasks  # noqa: F401 - registers bench.noop for submit_many in this process

    env.migrate()


def rotated(items: list[str], repeat: int) -> list[str]:
    """The variants in a different order each repeat, so no variant always runs first or last."""
    shift = repeat % len(items)
    return items[shift:] + items[:shift]


def _queue_base(name: str) -> str:
    base = split_variant(name)[0]
    return "dcr" if base == "dcr_noreuse" else base


def split_variant(name: str) -> tuple[str, list[str]]:
    """``terminus+async-claim`` -> ("terminus", ["async-claim"]); ``dcr_noreuse`` -> ("dcr_noreuse", [])."""
    from . import experiments

    base, _, rest = name.partition("+")
    return base, experiments.parse(rest)


def run_workers(args: argparse.Namespace, results: dict[str, Any]) -> None:
    from project.celery import app

    from . import experiments, workers
    from .common import VARIANTS

    # One worker per distinct setting: the project's (reuse on, no experiment), dcr_noreuse's
    # (CELERY_DB_REUSE_MAX=0) and one per experiment set. Only the measured variant's consumer is on.
    def worker_key(name: str) -> tuple[int, str]:
        base, exps = split_variant(name)
        return (0 if base == "dcr_noreuse" else 1000, ",".join(exps))

    def queue_of(name: str) -> str:
        base = split_variant(name)[0]
        return VARIANTS["dcr" if base == "dcr_noreuse" else base][1]

    pool: dict[tuple[int, str], env.Worker] = {}
    try:
        for key in dict.fromkeys(worker_key(v) for v in args.variant_list):
            reuse, exps = key
            queues = sorted({queue_of(v) for v in args.variant_list if worker_key(v) == key})
            tag = "main" if key == (1000, "") else ("noreuse" if reuse == 0 else exps.replace(",", "+"))
            extra = {"BENCH_EXPERIMENTS": exps} if exps else {}
            pool[key] = env.Worker(queues, tag=tag, log_level=args.log_level, db_reuse_max=reuse, **extra)
        for worker in pool.values():
            worker.wait_ready(app)
            worker.pause_all(app)

        def measure(name: str, fn: Any, *fn_args: Any, **fn_kwargs: Any) -> Any:
            base, exps = split_variant(name)
            if fn is workers.drain and "no-record-writes" in exps:
                fn_kwargs["records"] = False  # that breakdown writes no record by design
            with experiments.active(exps):  # the runner's side of the change (submission)
                return fn(pool[worker_key(name)], "dcr" if base == "dcr_noreuse" else base, *fn_args, **fn_kwargs)

        # Warm-up: every variant once (children import lazily, connections open, plans cache).
        for name in args.variant_list:
            measure(name, workers.drain, min(200, args.jobs), settle=0.2)
        time.sleep(workers.STATS_FLUSH_WAIT)  # the warm-ups' statistics stay out of the first window
        if "throughput" in args.phases:
            runs = results.setdefault("throughput", {})
            for repeat in range(args.repeats):
                for name in rotated(args.variant_list, repeat):
                    run = measure(name, workers.drain, args.jobs)
                    runs.setdefault(name, []).append(workers.as_dict(run))
                    db_cpu = "-" if run.db_cpu_ms_per_job is None else f"{run.db_cpu_ms_per_job:.2f}"
                    print(
                        f"  throughput r{repeat + 1} {name:14s} {run.jobs_per_s:7.0f} jobs/s  CPU ms/job: worker "
                        f"{run.cpu_ms_per_job:.2f} (main {run.main_cpu_ms_per_job:.2f} + pool "
                        f"{run.child_cpu_ms_per_job:.2f}), PostgreSQL {db_cpu}; xacts/job "
                        f"{run.commits_per_job:.2f}; conns {run.sessions_opened}; "
                        f"enqueue {run.enqueue_jobs_per_s:.0f}/s",
                        flush=True,
                    )
        if "latency" in args.phases:
            # Two variants on one queue cannot take turns (both workers would consume it): a
            # variant sharing its queue with an earlier one gets a latency round of its own.
            groups: list[list[str]] = []
            for name in args.variant_list:
                queue = VARIANTS[_queue_base(name)][1]
                for group in groups:
                    if all(VARIANTS[_queue_base(other)][1] != queue for other in group):
                        group.append(name)
                        break
                else:
                    groups.append([name])
            runs = results.setdefault("latency", {})
            for repeat in range(args.repeats):
                for group in groups:
                    spec = {
                        name: (
                            pool[worker_key(name)],
                            "dcr" if split_variant(name)[0] == "dcr_noreuse" else split_variant(name)[0],
                            functools.partial(experiments.active, split_variant(name)[1]),
                        )
                        for name in rotated(group, repeat)
                    }
                    for name, run in workers.latency(spec, args.latency_jobs).items():
                        summary = run.summary()
                        runs.setdefault(name, []).append({**summary, "samples_ms": run.samples})
                        print(
                            f"  latency    r{repeat + 1} {name:14s} p50 {summary['p50_ms']:6.2f} ms  "
                            f"p99 {summary['p99_ms']:6.2f} ms  (submit call p50 {summary['submit_p50_ms']:.2f} ms)",
                            flush=True,
                        )
    finally:
        for worker in pool.values():
            worker.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env.install_signal_handlers()
    env.VAR.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"started": time.time(), "args": {k: str(v) for k, v in vars(args).items()}}
    from . import report

    results["machine"] = report.machine()
    results["code"] = report.code_state()
    failed = False
    try:
        setup_django(args.log_level)
        env.flush_bench_redis()
        if {"throughput", "latency"} & set(args.phases):
            print("workers: drain throughput and latency", flush=True)
            run_workers(args, results)
        if {"api", "pages"} & set(args.phases):
            from . import web

            print("web: API submit, bulk submit and pages", flush=True)
            web.run(args, results)
        if "cleanup" in args.phases:
            from . import cleanup

            print("cleanup", flush=True)
            from django.conf import settings

            from . import experiments

            if args.cleanup_batch:
                settings.TERMINUS_CLEANUP_BATCH = args.cleanup_batch  # read by tasks.crons.cleanup at each call
            with experiments.active(args.cleanup_experiment_list):
                results["cleanup"] = cleanup.run(args)
            results["cleanup"]["batch"] = getattr(settings, "TERMINUS_CLEANUP_BATCH", None)
            if args.cleanup_experiment_list:
                results["cleanup"]["experiments"] = ",".join(args.cleanup_experiment_list)
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping every process it started", file=sys.stderr)
        failed = True
    except Exception:  # noqa: BLE001 - report what was measured so far, then fail
        traceback.print_exc()
        failed = True
    finally:
        env.Managed.stop_all()
        if env.holds_lock():  # a run refused by the lock must not touch the running one's Redis
            with contextlib.suppress(Exception):  # Redis gone: nothing of ours is left in it either
                env.flush_bench_redis()
    results["finished"] = time.time()
    results["machine_after"] = report.load()
    results["failed"] = failed
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, default=str))
    table, verdicts = report.render(results, args)
    print(table)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(report.markdown(results, args, table))
    print(f"\nresults: {args.results}  raw: {args.json}")
    if failed:
        return 2
    return 1 if args.strict and not all(verdicts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
