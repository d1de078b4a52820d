"""``manage.py deadletters list|replay|resolve|purge``: the dead-letter store from a shell.

Every action takes the same filters and calls the functions the API and the admin use
(``tasks.failure.dead_letters.replay``, ``resolve``, ``enforce_caps``)::

    manage.py deadletters list --type webhook.deliver --older-than 2h          # a table (--json: machine output)
    manage.py deadletters replay --id 42 --payload '{"url": "https://…"}'     # one, with an edited payload
    manage.py deadletters replay --error-type TransientError --dry-run        # what would run
    manage.py deadletters resolve --reason unknown_task
    manage.py deadletters purge --older-than 30d                               # replayed/resolved ones
    manage.py deadletters purge --caps                                         # TERMINUS_DEAD_LETTER_MAX_*

``--status`` defaults to ``open`` for list, replay and resolve (``all`` for every status), and to
``replayed,resolved`` for purge, which refuses to delete open dead letters unless
``--include-open`` is given. With ``--id`` or ``--job`` the default status does not apply.
Bad input is a CommandError (exit status 1; 2 for an unknown option).
"""

from __future__ import annotations

import argparse
import getpass
import json
import uuid
from datetime import UTC, timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count, QuerySet
from django.utils import timezone

from results.management.arguments import duration, positive_int
from results.models import DeadLetter, DeadLetterReason, DeadLetterStatus
from tasks.failure.dead_letters import enforce_caps
from tasks.runtime.types import get_job_type
from tasks.submit.actions import ReplayError, replay, resolve
from tasks.submit.validation import SubmissionError, validate_payload

#: Rows ``list`` prints when no --limit is given.
DEFAULT_LIST_LIMIT = 100
DEFAULT_BATCH_SIZE = 1000
CLOSED = (DeadLetterStatus.REPLAYED, DeadLetterStatus.RESOLVED)


def dead_letter_id(value: str) -> int:
    number = positive_int(value)
    if number > 2**63 - 1:
        raise argparse.ArgumentTypeError(f"no dead letter has the id {value}")
    return number


def job_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a job id (a UUID)") from None


def choice_list(known: list[str], *, extra: tuple[str, ...] = ()) -> Any:
    """A comma-separated list of ``known`` values (repeatable); errors name the bad value."""

    def parse(value: str) -> list[str]:
        parts = [part.strip() for part in value.split(",") if part.strip()]
        if not parts:
            raise argparse.ArgumentTypeError("give at least one value")
        for part in parts:
            if part not in known and part not in extra:
                raise argparse.ArgumentTypeError(f"unknown value {part!r}; known: {', '.join([*known, *extra])}")
        return parts

    return parse


class Command(BaseCommand):
    help = (
        "Inspect, replay, resolve or purge dead letters (jobs and messages that failed for good). "
        "Run 'manage.py deadletters <action> --help' for an action's options."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", metavar="{list,replay,resolve,purge}", required=True)
        listing = actions.add_parser("list", help="Print matching dead letters, newest first.")
        self._add_filters(listing, default_status="open")
        listing.add_argument(
            "--limit", type=positive_int, help=f"Print at most this many (default {DEFAULT_LIST_LIMIT})."
        )
        listing.add_argument("--json", action="store_true", help="One JSON array on stdout, for scripts.")

        replaying = actions.add_parser("replay", help="Run matching open dead letters again as new jobs.")
        self._add_filters(replaying, default_status="open")
        self._add_action_options(replaying, "replay")
        replaying.add_argument(
            "--payload",
            metavar="JSON",
            help="A JSON object replacing the original input (one --id only); validated like a submission.",
        )

        resolving = actions.add_parser("resolve", help="Close matching open dead letters without running them.")
        self._add_filters(resolving, default_status="open")
        self._add_action_options(resolving, "resolve")
        resolving.add_argument("--by", help="Who resolves them (recorded; default: your login name).")

        purging = actions.add_parser("purge", help="Delete matching dead letters (replayed and resolved ones).")
        self._add_filters(purging, default_status="replayed,resolved")
        self._add_action_options(purging, "purge")
        purging.add_argument("--include-open", action="store_true", help="Delete open dead letters too.")
        purging.add_argument(
            "--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, help="Rows deleted per statement."
        )
        purging.add_argument(
            "--caps",
            action="store_true",
            help=(
                "Apply the configured caps instead: closed dead letters older than "
                "TERMINUS_DEAD_LETTER_MAX_AGE_DAYS, then the oldest beyond TERMINUS_DEAD_LETTER_MAX_ROWS."
            ),
        )

    def _add_filters(self, parser: CommandParser, *, default_status: str) -> None:
        statuses = choice_list(DeadLetterStatus.values, extra=("all",))
        parser.add_argument("--type", help="Only this job type (exact).")
        parser.add_argument("--error-type", help="Only this error type (exact), e.g. PermanentError.")
        parser.add_argument(
            "--reason", type=choice_list(DeadLetterReason.values), action="extend", help="Only these reasons."
        )
        parser.add_argument(
            "--status",
            type=statuses,
            action="extend",
            help=f"open, replayed, resolved or all (comma-separated; default {default_status}).",
        )
        parser.add_argument(
            "--older-than", type=duration, metavar="DURATION", help="Dead-lettered longer ago than 3600, 30m, 2h, 7d."
        )
        parser.add_argument(
            "--id",
            type=dead_letter_id,
            action="append",
            dest="ids",
            metavar="ID",
            help="A dead letter id (repeatable).",
        )
        parser.add_argument(
            "--job",
            type=job_id,
            action="append",
            dest="jobs",
            metavar="JOB_ID",
            help="The dead letter of this job (repeatable).",
        )

    def _add_action_options(self, parser: CommandParser, verb: str) -> None:
        parser.add_argument("--limit", type=positive_int, help=f"{verb.capitalize()} at most this many, oldest first.")
        parser.add_argument("--dry-run", action="store_true", help=f"Say what would {verb}; change nothing.")

    # -- selection -----------------------------------------------------------------------------
    def select(self, options: dict[str, Any], *, default_status: tuple[str, ...]) -> QuerySet[DeadLetter]:
        """The dead letters the filters name; an unknown --id or --job is an error."""
        ids, jobs = options["ids"] or [], options["jobs"] or []
        if ids or jobs:
            found = list(DeadLetter.objects.matching(ids=ids, jobs=jobs).values_list("pk", "job_id"))
            missing = [str(i) for i in ids if i not in {pk for pk, _ in found}]
            missing += [f"job {j}" for j in jobs if j not in {job for _, job in found}]
            if missing:
                raise CommandError(f"no dead letter {', '.join(missing)}")
        statuses = options["status"]
        if statuses and "all" in statuses:
            statuses = None
        elif not statuses and not (ids or jobs):
            statuses = default_status
        return DeadLetter.objects.matching(
            ids=ids,
            jobs=jobs,
            statuses=statuses,
            task_name=options["type"],
            error_type=options["error_type"],
            reasons=options["reason"],
            older_than=options["older_than"],
        )

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        handlers = {
            "list": self.list_letters,
            "replay": self.replay_letters,
            "resolve": self.resolve_letters,
            "purge": self.purge_letters,
        }
        handlers[action](options)

    # -- list ----------------------------------------------------------------------------------
    def list_letters(self, options: dict[str, Any]) -> None:
        letters = self.select(options, default_status=(DeadLetterStatus.OPEN,)).defer(
            "traceback", "body", "raw_body", "headers"
        )
        limit = options["limit"] or DEFAULT_LIST_LIMIT
        rows = list(letters.order_by("-created_at", "-pk")[: limit + 1])
        more = len(rows) > limit
        rows = rows[:limit]
        if options["json"]:
            self.stdout.write(json.dumps([as_json(letter) for letter in rows], indent=2))
            return
        if not rows:
            self.stdout.write("No dead letters match.")
            return
        self.stdout.write(table(rows))
        shown = f"{len(rows)} dead letter{'s' if len(rows) != 1 else ''}"
        if more:
            shown += f" shown; more match (raise --limit, now {limit})"
        self.stdout.write(shown + ".")

    # -- replay --------------------------------------------------------------------------------
    def replay_letters(self, options: dict[str, Any]) -> None:
        payload = parse_payload(options["payload"], options["ids"], options["jobs"])
        letters = self.oldest_first(self.select(options, default_status=(DeadLetterStatus.OPEN,)), options)
        replayed, skipped, refused = 0, 0, 0
        for letter in letters:
            label = describe(letter)
            if letter.status != DeadLetterStatus.OPEN:
                already = f" as job {letter.replay_job_id}" if letter.replay_job_id else ""
                self.stdout.write(f"skip   {label}: it is {letter.status}{already}")
                skipped += 1
                continue
            if options["dry_run"]:
                problem = replay_problem(letter, payload)
                if problem:
                    self.stdout.write(f"refuse {label}: {problem}")
                    refused += 1
                else:
                    self.stdout.write(f"would replay {label}")
                    replayed += 1
                continue
            try:
                job, created = replay(letter, payload=payload)
            except ReplayError as exc:
                self.stderr.write(f"refuse {label}: {exc}")
                refused += 1
                continue
            except SubmissionError as exc:
                self.stderr.write(f"refuse {label}: invalid payload: {field_errors(exc.errors)}")
                refused += 1
                continue
            if created:
                self.stdout.write(f"replay {label} -> job {job.pk}")
                replayed += 1
            else:  # replayed meanwhile by someone else: its first replay stands
                self.stdout.write(f"skip   {label}: already replayed as job {job.pk}")
                skipped += 1
        verb = "Would replay" if options["dry_run"] else "Replayed"
        self.summarize(f"{verb} {plural(replayed)}", skipped, refused, "replay", options["dry_run"])

    # -- resolve -------------------------------------------------------------------------------
    def resolve_letters(self, options: dict[str, Any]) -> None:
        by = options["by"] if options["by"] is not None else login_name()
        if not by.strip():
            raise CommandError("--by must not be empty")
        letters = self.oldest_first(self.select(options, default_status=(DeadLetterStatus.OPEN,)), options)
        resolved, skipped = 0, 0
        for letter in letters:
            label = describe(letter)
            if letter.status == DeadLetterStatus.OPEN and (options["dry_run"] or resolve(letter, by=by)):
                self.stdout.write(f"{'would resolve' if options['dry_run'] else 'resolve'} {label}")
                resolved += 1
            else:
                self.stdout.write(f"skip   {label}: it is {DeadLetter.objects.get(pk=letter.pk).status}")
                skipped += 1
        verb = "Would resolve" if options["dry_run"] else "Resolved"
        self.summarize(f"{verb} {plural(resolved)}", skipped, 0, "resolve", options["dry_run"])

    # -- purge ---------------------------------------------------------------------------------
    def purge_letters(self, options: dict[str, Any]) -> None:
        if options["caps"]:
            self.purge_caps(options)
            return
        default = (*CLOSED, DeadLetterStatus.OPEN) if options["include_open"] else CLOSED
        letters = self.select(options, default_status=default)
        if not options["include_open"]:
            open_count = letters.filter(status=DeadLetterStatus.OPEN).count()
            if open_count:
                raise CommandError(
                    f"refusing to purge {plural(open_count, 'open dead letter')}: nobody has replayed or resolved "
                    "them yet. Resolve them first, or pass --include-open to delete them anyway."
                )
        limit = options["limit"]
        if options["dry_run"]:
            counts = dict(letters.values_list("status").annotate(n=Count("pk")).order_by())
            total = sum(counts.values()) if limit is None else min(limit, sum(counts.values()))
            detail = ", ".join(f"{status}: {counts[status]}" for status in DeadLetterStatus.values if status in counts)
            self.stdout.write(f"Dry run: would purge {plural(total)}{f' ({detail})' if detail else ''}.")
            return
        deleted = 0
        while limit is None or deleted < limit:
            size = options["batch_size"] if limit is None else min(options["batch_size"], limit - deleted)
            ids = list(letters.order_by("created_at", "pk").values_list("pk", flat=True)[:size])
            if not ids:
                break
            removed = DeadLetter.objects.filter(pk__in=ids).delete()[1].get(DeadLetter._meta.label, 0)
            deleted += removed
            self.stdout.write(f"deleted {removed} (total {deleted})")
        self.stdout.write(f"Purged {plural(deleted)}.")

    def purge_caps(self, options: dict[str, Any]) -> None:
        ignored = [
            name
            for name in ("type", "error_type", "reason", "status", "older_than", "ids", "jobs", "limit")
            if options[name]
        ]
        if ignored or options["include_open"]:
            flags = [f"--{name.replace('_', '-')}" for name in ignored] + (
                ["--include-open"] if options["include_open"] else []
            )
            raise CommandError(f"--caps applies the configured caps and takes no filters (got {', '.join(flags)})")
        max_age, max_rows = settings.TERMINUS_DEAD_LETTER_MAX_AGE_DAYS, settings.TERMINUS_DEAD_LETTER_MAX_ROWS
        caps = f"TERMINUS_DEAD_LETTER_MAX_AGE_DAYS={max_age}, TERMINUS_DEAD_LETTER_MAX_ROWS={max_rows}"
        if options["dry_run"]:
            aged = DeadLetter.objects.filter(
                status__in=CLOSED, created_at__lt=timezone.now() - timedelta(days=max_age)
            ).count()
            excess = max(0, DeadLetter.objects.count() - aged - max_rows)
            self.stdout.write(
                f"Dry run: the caps ({caps}) would purge {plural(aged)} past the age cap "
                f"and {plural(excess)} over the row cap."
            )
            return
        deleted = enforce_caps(batch=options["batch_size"])
        self.stdout.write(f"Purged {plural(deleted)} to keep within the caps ({caps}).")

    # -- helpers -------------------------------------------------------------------------------
    def oldest_first(self, letters: QuerySet[DeadLetter], options: dict[str, Any]) -> list[DeadLetter]:
        rows = letters.select_related("job").order_by("created_at", "pk")
        return list(rows[: options["limit"]] if options["limit"] else rows)

    def summarize(self, done: str, skipped: int, refused: int, verb: str, dry_run: bool) -> None:
        parts = [done]
        if skipped:
            parts.append(f"skipped {skipped} (not open)")
        if refused:
            parts.append(f"{'would refuse' if dry_run else 'could not ' + verb} {refused}")
        self.stdout.write("; ".join(parts) + ("." if not dry_run else ". Dry run: nothing was changed."))
        if refused and not dry_run:
            raise CommandError(f"could not {verb} {plural(refused)} (see the messages above)")


def parse_payload(raw: str | None, ids: list[int] | None, jobs: list[uuid.UUID] | None) -> dict[str, Any] | None:
    """The edited payload of ``replay --payload``: a JSON object, for exactly one dead letter."""
    if raw is None:
        return None
    if len(ids or []) + len(jobs or []) != 1:
        raise CommandError("--payload replaces one dead letter's input: give exactly one --id (or --job)")
    try:
        payload = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CommandError(f"--payload is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise CommandError(f"--payload must be a JSON object, not {type(payload).__name__}")
    return payload


def replay_problem(letter: DeadLetter, payload: dict[str, Any] | None) -> str:
    """Why replaying ``letter`` would be refused ("" if it would run): the dry run's check."""
    type_name = letter.job.type if letter.job else letter.task_name
    if get_job_type(type_name) is None:
        return f"names no known job type ({type_name or 'none'})"
    if payload is None:
        payload = letter.job.payload if letter.job else ((letter.body or {}).get("kwargs") or {})
    try:
        validate_payload(type_name, payload)
    except SubmissionError as exc:
        return f"invalid payload: {field_errors(exc.errors)}"
    return ""


def field_errors(errors: dict[str, Any]) -> str:
    return "; ".join(f"{field}: {' '.join(map(str, messages))}" for field, messages in errors.items())


def describe(letter: DeadLetter) -> str:
    subject = f"job {letter.job_id}" if letter.job_id else f"message {letter.message_key}"
    return f"dead letter {letter.pk} ({letter.task_name or '?'}, {subject})"


def plural(count: int, noun: str = "dead letter") -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def login_name() -> str:
    try:
        return f"{getpass.getuser()} (manage.py)"
    except (KeyError, OSError):  # no login name in a bare container
        return "manage.py"


def as_json(letter: DeadLetter) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": letter.pk,
        "created_at": iso(letter.created_at),
        "type": letter.task_name,
        "queue": letter.queue,
        "reason": letter.reason,
        "error_type": letter.error_type,
        "error_message": letter.error_message,
        "attempts": letter.attempts,
        "status": letter.status,
        "job": str(letter.job_id) if letter.job_id else None,
        "message_key": letter.message_key,
        "first_failed_at": iso(letter.first_failed_at),
        "last_failed_at": iso(letter.last_failed_at),
        "replay_job": str(letter.replay_job_id) if letter.replay_job_id else None,
        "resolved_by": letter.resolved_by,
    }


def table(letters: list[DeadLetter]) -> str:
    """A fixed-width table: id, created, type, reason, error type, attempts, status, job."""
    header = ("ID", "CREATED (UTC)", "TYPE", "REASON", "ERROR TYPE", "ATTEMPTS", "STATUS", "JOB")
    rows = [
        (
            str(letter.pk),
            letter.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            letter.task_name or "?",
            letter.reason,
            letter.error_type or "-",
            str(letter.attempts),
            letter.status,
            str(letter.job_id) if letter.job_id else "- (message " + letter.message_key[:24] + ")",
        )
        for letter in letters
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )
