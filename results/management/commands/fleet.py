"""``manage.py fleet <verb>``: look at and steer a fleet of workers (docs/operations.md has the recipes).

    fleet queues                      messages waiting, consumers, running and oldest queued job per queue
    fleet workers [--worker NAME]     every worker that answers: queues, pool size, jobs running and held
    fleet stuck [--stale 5m]          open jobs past their deadline, silent, never published or overdue
    fleet failures [--since 1h]       per job type: finished, failed, failure rate, retries, top errors
    fleet pause <queue>               every worker (or --worker NAME) stops taking messages from <queue>
    fleet resume <queue>              the workers started with <queue> take its messages again
    fleet drain <queue> [--wait 15m]  pause, then wait until no worker runs or holds a job of <queue>

Every verb takes ``--json``. Workers answer a broadcast within ``--reply-timeout`` seconds (default
TERMINUS_METRICS_INSPECT_TIMEOUT). A pause lasts until the worker restarts: a restarted worker
consumes the queues it is started with (-Q / WORKER_QUEUES) again.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count, Min, Q
from django.utils import timezone

from project.celery import app
from results.management.arguments import parse_duration
from results.models import AttemptOutcome, Job, JobAttempt, Status
from tasks.fleet.probes import broker_queue_depths, fleet_snapshot, known_queues


def duration_option(value: str, *, option: str) -> timedelta:
    """A positive duration (results.management.arguments' grammar); anything else is a CommandError."""
    try:
        duration = parse_duration(value)
    except ValueError as exc:
        raise CommandError(f"{option}: {value!r} is not a duration ({exc})") from None
    if duration <= timedelta(0):
        raise CommandError(f"{option}: {value!r} must be longer than 0 seconds")
    return duration


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d"


class Command(BaseCommand):
    help = "Look at and steer the worker fleet: queues, workers, stuck, failures, pause, resume, drain."

    def add_arguments(self, parser: CommandParser) -> None:
        verbs = parser.add_subparsers(dest="verb", required=True, metavar="verb", title="verbs")

        def verb(name: str, help_text: str, *, broadcast: bool = True) -> CommandParser:
            sub = verbs.add_parser(name, help=help_text, description=help_text)
            sub.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
            if broadcast:
                sub.add_argument(
                    "--reply-timeout",
                    type=float,
                    default=None,
                    metavar="SECONDS",
                    help="How long to wait for the workers' answers (default TERMINUS_METRICS_INSPECT_TIMEOUT).",
                )
            return sub

        verb("queues", "Messages waiting, consumers, running jobs and the oldest queued job, per queue.")
        workers = verb(
            "workers", "Every worker that answers: queues consumed and paused, pool size, jobs running and held."
        )
        workers.add_argument(
            "--worker", action="append", default=[], metavar="NAME", help="Only this worker; repeat for several."
        )
        stuck = verb("stuck", "Open jobs past their deadline, without a heartbeat, never published or overdue.")
        stuck.add_argument("--stale", default="5m", help="How long without news counts as stuck (default 5m).")
        stuck.add_argument("--limit", type=int, default=50, help="Show at most this many jobs (default 50).")
        failures = verb("failures", "Per job type: jobs finished and failed, failure rate, retries, top errors.")
        failures.add_argument("--since", default="1h", help="Window to look back over (default 1h).")
        failures.add_argument("--type", dest="job_type", default=None, help="Only this job type.")
        for name, help_text in (
            ("pause", "Stop taking messages from QUEUE on every worker (or the --worker ones); they stay queued."),
            ("resume", "Take messages from QUEUE again, on the workers that were started with it."),
            ("drain", "Pause QUEUE, then wait until no worker runs or holds one of its jobs."),
        ):
            sub = verb(name, help_text)
            sub.add_argument("queue", help=f"One of the known queues ({', '.join(known_queues())}).")
            sub.add_argument(
                "--worker",
                action="append",
                default=[],
                metavar="NAME",
                help="Only this worker (node name, e.g. terminus@host); repeat for several.",
            )
            if name == "drain":
                sub.add_argument("--wait", default="15m", help="Give up after this long (default 15m).")

    def handle(self, *args: Any, verb: str, **options: Any) -> None:
        self.as_json = options["json"]
        timeout = options.get("reply_timeout")
        if timeout is not None and not 0 < timeout <= 60:
            raise CommandError(f"--reply-timeout: {timeout} must be more than 0 and at most 60 seconds")
        self.reply_timeout = timeout or settings.TERMINUS_METRICS_INSPECT_TIMEOUT
        self.verb_word = verb
        if "queue" in options and options["queue"] not in known_queues():
            raise CommandError(f"unknown queue {options['queue']!r}; known queues: {', '.join(known_queues())}")
        handler = getattr(self, f"do_{verb}")
        handler(**options)

    # -- output -------------------------------------------------------------------------------
    def emit(self, data: dict[str, Any], lines: list[str]) -> None:
        if self.as_json:
            self.stdout.write(json.dumps(data, indent=2, default=str))
        else:
            for line in lines:
                self.stdout.write(line)

    def table(self, header: list[str], rows: list[list[Any]]) -> list[str]:
        cells = [header, *[[str(cell) for cell in row] for row in rows]]
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]

    # -- probes -------------------------------------------------------------------------------
    def snapshot(self, destination: list[str] | None = None) -> dict[str, dict[str, Any]]:
        try:
            return fleet_snapshot(timeout=self.reply_timeout, destination=destination)
        except Exception as exc:
            raise CommandError(f"cannot reach the broker to ask the workers: {exc}") from exc

    def depths(self, queues: list[str]) -> dict[str, int]:
        try:
            return broker_queue_depths(queues)
        except Exception as exc:
            raise CommandError(f"cannot reach the broker to count messages: {exc}") from exc

    def targets(self, queue: str, workers: list[str]) -> dict[str, dict[str, Any]]:
        """The answering workers (all, or the named ones, each of which must answer)."""
        fleet = self.snapshot(destination=workers or None)
        missing = sorted(set(workers) - set(fleet))
        if missing:
            raise CommandError(f"no answer within {self.reply_timeout:g}s from: {', '.join(missing)}")
        if not fleet:
            raise CommandError(f"no worker answered within {self.reply_timeout:g}s; nothing to {self.verb_word}")
        return fleet

    def wait_consuming(self, queue: str, workers: list[str], *, consuming: bool) -> list[str]:
        """Until each of ``workers`` does (or no longer does) consume ``queue``; the ones that don't yet."""
        deadline = time.monotonic() + max(5.0, 5 * self.reply_timeout)
        while True:
            fleet = self.snapshot(destination=workers)
            pending = [w for w in workers if (queue in fleet.get(w, {}).get("consuming", [])) != consuming]
            if not pending or time.monotonic() > deadline:
                return pending
            time.sleep(0.2)

    # -- verbs --------------------------------------------------------------------------------
    def do_queues(self, **_: Any) -> None:
        queues = known_queues()
        depths = self.depths(queues)
        fleet = self.snapshot()
        now = timezone.now()
        db = {
            row["queue"]: row
            for row in Job.objects.open()
            .order_by()
            .values("queue")
            .annotate(
                queued=Count("pk", filter=Q(status=Status.QUEUED)),
                running=Count("pk", filter=Q(status=Status.RUNNING)),
                retrying=Count("pk", filter=Q(status=Status.RETRYING)),
                oldest=Min("created_at", filter=Q(status=Status.QUEUED)),
            )
        }
        report = []
        for queue in queues:
            row = db.get(queue, {})
            oldest = row.get("oldest")
            consumers = [name for name, worker in fleet.items() if queue in worker["consuming"]]
            report.append(
                {
                    "queue": queue,
                    "waiting": depths.get(queue, 0),
                    "consumers": len(consumers),
                    "consuming_workers": consumers,
                    "queued_jobs": row.get("queued", 0),
                    "running_jobs": row.get("running", 0),
                    "retrying_jobs": row.get("retrying", 0),
                    "oldest_queued_age_seconds": (now - oldest).total_seconds() if oldest else None,
                }
            )
        lines = self.table(
            ["queue", "waiting", "consumers", "queued", "running", "retrying", "oldest queued"],
            [
                [
                    r["queue"],
                    r["waiting"],
                    r["consumers"],
                    r["queued_jobs"],
                    r["running_jobs"],
                    r["retrying_jobs"],
                    age(r["oldest_queued_age_seconds"]),
                ]
                for r in report
            ],
        )
        lines.append(f"({len(fleet)} worker(s) answered within {self.reply_timeout:g}s; waiting = in the broker)")
        self.emit({"queues": report, "workers_answering": len(fleet)}, lines)

    def do_workers(self, *, worker: list[str], **_: Any) -> None:
        fleet = self.snapshot(destination=worker or None)
        missing = sorted(set(worker) - set(fleet))
        if missing:
            raise CommandError(f"no answer within {self.reply_timeout:g}s from: {', '.join(missing)}")
        now = time.time()
        report = []
        lines: list[str] = []
        for name, worker in fleet.items():
            paused = sorted(set(worker["configured"]) - set(worker["consuming"]))
            report.append({"worker": name, **worker, "paused": paused})
            lines.append(
                f"{name}  consuming: {', '.join(worker['consuming']) or '-'}"
                f"{'  PAUSED: ' + ', '.join(paused) if paused else ''}  pool: {worker['concurrency']}"
                f"  running: {len(worker['active'])}  held: {len(worker['reserved']) + len(worker['scheduled'])}"
            )
            for task in worker["active"]:
                ran = f"{now - task['started']:.0f}s" if task["started"] else "?"
                lines.append(f"    {task['id']}  {task['type']}  queue {task['queue']}  running {ran}")
            for task in worker["reserved"] + worker["scheduled"]:
                due = f"  due {task['eta']}" if task["eta"] else ""
                lines.append(f"    {task['id']}  {task['type']}  queue {task['queue']}  held{due}")
        if not fleet:
            lines.append(f"no worker answered within {self.reply_timeout:g}s")
        self.emit({"workers": report}, lines)

    def do_stuck(self, *, stale: str, limit: int, **_: Any) -> None:
        if limit < 1:
            raise CommandError(f"--limit: {limit} must be at least 1")
        stale_for = duration_option(stale, option="--stale")
        now = timezone.now()
        before = now - stale_for
        running, queued, retrying = Status.RUNNING, Status.QUEUED, Status.RETRYING
        rules = [
            ("past deadline", Q(terminal_by__lt=now), lambda j: j.terminal_by < now),
            (
                f"no heartbeat for {age(stale_for.total_seconds())}",
                Q(status=running, heartbeat_at__lt=before),
                lambda j: j.status == running and j.heartbeat_at is not None and j.heartbeat_at < before,
            ),
            (
                "never published",
                Q(status=queued, dispatched_at__isnull=True, created_at__lt=before),
                lambda j: j.status == queued and j.dispatched_at is None and j.created_at < before,
            ),
            (
                "retry overdue",
                Q(status=retrying, next_retry_at__lt=before),
                lambda j: j.status == retrying and j.next_retry_at is not None and j.next_retry_at < before,
            ),
        ]
        any_rule = Q()
        for _, condition, _ in rules:
            any_rule |= condition
        stuck = Job.objects.open().filter(any_rule)
        total = stuck.count()
        jobs = [
            {
                "id": str(job.pk),
                "type": job.type,
                "queue": job.queue,
                "status": job.status,
                "worker": job.worker,
                "attempts": job.attempts,
                "reasons": [reason for reason, _, applies in rules if applies(job)],
                "age_seconds": (now - job.created_at).total_seconds(),
                "heartbeat_at": job.heartbeat_at,
                "terminal_by": job.terminal_by,
            }
            for job in stuck.order_by("created_at").defer("payload", "result", "traceback")[:limit]
        ]
        lines = self.table(
            ["job", "type", "queue", "status", "age", "worker", "why"],
            [
                [
                    j["id"],
                    j["type"],
                    j["queue"],
                    j["status"],
                    age(j["age_seconds"]),
                    j["worker"] or "-",
                    "; ".join(j["reasons"]),
                ]
                for j in jobs
            ],
        )
        lines.append(f"{total} stuck job(s)" + (f", showing the oldest {len(jobs)}" if total > len(jobs) else ""))
        self.emit({"stale_seconds": stale_for.total_seconds(), "count": total, "jobs": jobs}, lines)

    def do_failures(self, *, since: str, job_type: str | None, **_: Any) -> None:
        window = duration_option(since, option="--since")
        start = timezone.now() - window
        jobs = Job.objects.filter(finished_at__gte=start)
        attempts = JobAttempt.objects.filter(finished_at__gte=start)
        if job_type is not None:
            jobs, attempts = jobs.filter(type=job_type), attempts.filter(job__type=job_type)
        types: dict[str, dict[str, Any]] = {}

        def entry(name: str) -> dict[str, Any]:
            return types.setdefault(
                name,
                {"type": name, "succeeded": 0, "failed": 0, "cancelled": 0, "attempts": 0, "retried": 0, "lost": 0},
            )

        for row in jobs.order_by().values("type", "status").annotate(n=Count("pk")):
            entry(row["type"])[row["status"]] = row["n"]
            if row["status"] == Status.SUCCEEDED:  # a succeeded attempt has no row: its job's is the record
                entry(row["type"])["attempts"] += row["n"]
        for row in attempts.order_by().values("job__type", "outcome").annotate(n=Count("pk")):
            stats = entry(row["job__type"])
            stats["attempts"] += row["n"]
            if row["outcome"] == AttemptOutcome.RETRIED:
                stats["retried"] += row["n"]
            elif row["outcome"] == AttemptOutcome.LOST:
                stats["lost"] += row["n"]
        errors = jobs.filter(status=Status.FAILED).order_by().values("type", "error_type").annotate(n=Count("pk"))
        for row in sorted(errors, key=lambda r: -r["n"]):
            entry(row["type"]).setdefault("top_errors", []).append({"error_type": row["error_type"], "count": row["n"]})
        report = []
        for stats in types.values():
            decided = stats["succeeded"] + stats["failed"]
            stats["failure_rate"] = round(stats["failed"] / decided, 4) if decided else None
            stats["top_errors"] = stats.get("top_errors", [])[:3]
            report.append(stats)
        report.sort(key=lambda s: (-(s["failure_rate"] or 0), -s["failed"], s["type"]))
        lines = self.table(
            ["type", "succeeded", "failed", "cancelled", "failure rate", "attempts", "retried", "lost", "top errors"],
            [
                [
                    s["type"],
                    s["succeeded"],
                    s["failed"],
                    s["cancelled"],
                    "-" if s["failure_rate"] is None else f"{s['failure_rate']:.1%}",
                    s["attempts"],
                    s["retried"],
                    s["lost"],
                    ", ".join(f"{e['error_type']} x{e['count']}" for e in s["top_errors"]) or "-",
                ]
                for s in report
            ],
        )
        lines.append(
            f"jobs and attempts finished in the last {age(window.total_seconds())}; "
            "failure rate = failed / (succeeded + failed)"
        )
        self.emit({"since": start, "window_seconds": window.total_seconds(), "types": report}, lines)

    def do_pause(self, *, queue: str, worker: list[str], **_: Any) -> None:
        paused = self.pause(queue, worker)
        waiting = self.depths([queue])[queue]
        lines = [
            f"paused {queue} on {len(paused)} worker(s): {', '.join(paused) or '-'}",
            f"{waiting} message(s) wait in the broker; jobs already running finish.",
            f"resume with: manage.py fleet resume {queue}",
        ]
        if not paused:
            lines[0] = f"no answering worker consumes {queue}: nothing to pause"
        self.emit({"queue": queue, "paused": paused, "waiting": waiting}, lines)

    def pause(self, queue: str, workers: list[str]) -> list[str]:
        fleet = self.targets(queue, workers)
        consumers = [name for name, answer in fleet.items() if queue in answer["consuming"]]
        if not consumers:
            return []
        app.control.cancel_consumer(
            queue, destination=consumers, reply=True, timeout=self.reply_timeout, limit=len(consumers)
        )
        pending = self.wait_consuming(queue, consumers, consuming=False)
        if pending:
            raise CommandError(f"{', '.join(pending)} still consume {queue}; run the command again")
        return consumers

    def do_resume(self, *, queue: str, worker: list[str], **_: Any) -> None:
        fleet = self.targets(queue, worker)
        replies = app.control.broadcast(
            "terminus_resume_queue",
            arguments={"queue": queue},
            destination=list(fleet),
            reply=True,
            timeout=self.reply_timeout,
            limit=len(fleet),
        )
        answers = {node: answer for reply in replies or [] for node, answer in reply.items()}
        resumed = sorted(node for node, answer in answers.items() if "ok" in answer)
        skipped = sorted(node for node, answer in answers.items() if "skipped" in answer)
        if not resumed:
            raise CommandError(
                f"no answering worker was started with {queue} ({len(skipped)} skipped: {', '.join(skipped) or '-'}); "
                f"start a worker with -Q {queue}"
            )
        pending = self.wait_consuming(queue, resumed, consuming=True)
        if pending:
            raise CommandError(f"{', '.join(pending)} did not start consuming {queue}; run the command again")
        lines = [f"resumed {queue} on {len(resumed)} worker(s): {', '.join(resumed)}"]
        if skipped:
            lines.append(f"left alone (not started with {queue}): {', '.join(skipped)}")
        self.emit({"queue": queue, "resumed": resumed, "skipped": skipped}, lines)

    def do_drain(self, *, queue: str, worker: list[str], wait: str, **_: Any) -> None:
        limit = duration_option(wait, option="--wait")
        paused = self.pause(queue, worker)
        deadline = time.monotonic() + limit.total_seconds()
        held: list[dict[str, Any]] = []
        while paused:
            fleet = self.snapshot(destination=paused)
            held = [
                {"worker": name, **task}
                for name, answer in fleet.items()
                for task in answer["active"] + answer["reserved"] + answer["scheduled"]
                if task["queue"] == queue
            ]
            if not held or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if held:
            jobs = ", ".join(f"{task['id']} on {task['worker']}" for task in held)
            raise CommandError(
                f"{queue} is paused on {', '.join(paused)} but {len(held)} job(s) still run or wait after "
                f"{age(limit.total_seconds())}: {jobs}"
            )
        waiting = self.depths([queue])[queue]
        lines = [
            f"drained {queue}: {len(paused)} worker(s) no longer take it and run none of its jobs: "
            f"{', '.join(paused) or '-'}",
            f"{waiting} message(s) wait in the broker for the next consumer.",
            f"resume with: manage.py fleet resume {queue}",
        ]
        self.emit({"queue": queue, "paused": paused, "waiting": waiting, "in_flight": []}, lines)
