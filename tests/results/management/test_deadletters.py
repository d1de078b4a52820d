"""``manage.py deadletters list|replay|resolve|purge`` on the real database (and one real worker run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from results.management.commands.deadletters import login_name
from results.models import Alert, DeadLetter, DeadLetterReason, DeadLetterStatus, Job, Status
from tasks.submit.outbox import submit
from tasks.submit.validation import validate_payload
from tests.factories import dead_letter_of, poison_dead_letter
from tests.helpers import ROOT, test_database_url, wait_for, wait_terminal


def run(*args: str) -> str:
    """The command's stdout (its stderr is kept apart: refusals are reported there)."""
    out = StringIO()
    call_command("deadletters", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def listed(*args: str) -> list[int]:
    return [row["id"] for row in json.loads(run("list", "--json", *args))]


def failed_job(payload: dict[str, Any] | None = None, *, error_type: str = "PermanentError") -> Job:
    """A job failed for good through the state machine; recorded without a message, so no worker runs it."""
    job = Job.objects.create(
        type="diagnostics.fail",
        payload=validate_payload("diagnostics.fail", {"mode": "permanent"}),
        terminal_by=timezone.now() + timedelta(hours=1),
        correlation_id=uuid.uuid4().hex,
    )
    if payload is not None:  # a payload the schema no longer accepts, as if the schema changed since
        Job.objects.filter(pk=job.pk).update(payload=payload)
    claim = Job(pk=job.pk).mark_started(worker="w1@test")
    assert claim is not None
    assert Job(pk=job.pk).mark_failed(error_type=error_type, error_message="no such customer")
    return Job.objects.get(pk=job.pk)


def letter(
    *,
    reason: str = DeadLetterReason.NON_RETRYABLE,
    age: timedelta | None = None,
    status: str = DeadLetterStatus.OPEN,
    **job_fields: Any,
) -> DeadLetter:
    """A dead letter recorded as the dead-letter task records it, ``age`` old, in ``status``."""
    return dead_letter_of(failed_job(**job_fields), reason=reason, status=status, age=age)


# -- list --------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_list_prints_a_table_of_open_dead_letters_newest_first():
    older = letter(age=timedelta(hours=2))
    newer = poison_dead_letter()
    letter(status=DeadLetterStatus.RESOLVED)
    out = run("list")
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID",
        "CREATED",
        "(UTC)",
        "TYPE",
        "REASON",
        "ERROR",
        "TYPE",
        "ATTEMPTS",
        "STATUS",
        "JOB",
    ]
    assert lines[1].split()[0] == str(newer.pk) and "billing.nonexistent" in lines[1] and "unknown_task" in lines[1]
    row = lines[2].split()
    assert row[0] == str(older.pk)
    assert row[3:] == ["diagnostics.fail", "non_retryable", "PermanentError", "1", "open", str(older.job_id)]
    assert lines[-1] == "2 dead letters."


@pytest.mark.django_db
def test_list_says_so_when_nothing_matches():
    assert run("list").strip() == "No dead letters match."
    assert json.loads(run("list", "--json")) == []


@pytest.mark.django_db
def test_list_json_is_machine_readable():
    dead = letter()
    [row] = json.loads(run("list", "--json"))
    assert row["id"] == dead.pk
    assert (row["type"], row["reason"], row["error_type"], row["status"]) == (
        "diagnostics.fail",
        "non_retryable",
        "PermanentError",
        "open",
    )
    assert (row["job"], row["attempts"], row["replay_job"]) == (str(dead.job_id), 1, None)
    assert row["created_at"] == dead.created_at.isoformat()


@pytest.mark.django_db
def test_list_filters_by_type_error_type_reason_status_age_id_and_job():
    fresh = letter()
    transient = letter(reason=DeadLetterReason.RETRIES_EXHAUSTED, error_type="TransientError", age=timedelta(hours=3))
    resolved = letter(status=DeadLetterStatus.RESOLVED, age=timedelta(days=8))
    unknown = poison_dead_letter()
    cases = {
        (): [unknown.pk, fresh.pk, transient.pk],
        ("--status", "all"): [unknown.pk, fresh.pk, transient.pk, resolved.pk],
        ("--status", "resolved,replayed"): [resolved.pk],
        ("--status", "open", "--status", "resolved"): [unknown.pk, fresh.pk, transient.pk, resolved.pk],
        ("--type", "billing.nonexistent"): [unknown.pk],
        ("--error-type", "TransientError"): [transient.pk],
        ("--reason", "retries_exhausted,unknown_task"): [unknown.pk, transient.pk],
        ("--older-than", "2h"): [transient.pk],
        ("--older-than", "3600", "--status", "all"): [transient.pk, resolved.pk],
        ("--older-than", "7d", "--status", "all"): [resolved.pk],
        ("--older-than", "1w", "--status", "all"): [resolved.pk],
        ("--older-than", "181m"): [],
        ("--id", str(resolved.pk)): [resolved.pk],  # an id names it whatever its status
        ("--id", str(fresh.pk), "--id", str(unknown.pk)): [unknown.pk, fresh.pk],
        ("--job", str(transient.job_id)): [transient.pk],
        ("--limit", "2"): [unknown.pk, fresh.pk],
    }
    for args, expected in cases.items():
        assert listed(*args) == expected, args


@pytest.mark.django_db
def test_list_stops_at_its_limit_and_says_more_match():
    for _ in range(3):
        letter()
    out = run("list", "--limit", "2")
    assert len(out.splitlines()) == 4  # header, two rows, the note
    assert "more match" in out.splitlines()[-1]


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("list", "--older-than", "2x"), "invalid duration '2x'"),
        (("list", "--older-than=-5m"), "invalid duration '-5m'"),
        (("list", "--older-than", "9999999d"), "more than 100 years"),
        (("list", "--status", "closed"), "unknown value 'closed'; known: open, replayed, resolved, all"),
        (("list", "--reason", "bored"), "unknown value 'bored'"),
        (("list", "--limit", "0"), "must be 1 or more"),
        (("list", "--limit", "many"), "'many' is not a whole number"),
        (("list", "--id", "abc"), "'abc' is not a whole number"),
        (("list", "--id", "424242"), "no dead letter 424242"),
        (("list", "--job", "not-a-uuid"), "is not a job id"),
        (("list", "--job", "00000000-0000-0000-0000-000000000000"), "no dead letter job 00000000-"),
        (("list", "--payload", "{}"), "unrecognized arguments: --payload"),
        (("replay", "--payload", "{}"), "give exactly one --id"),
        (("replay", "--id", "{id}", "--payload", "{not json"), "--payload is not valid JSON"),
        (("replay", "--id", "{id}", "--payload", "[1, 2]"), "--payload must be a JSON object, not list"),
        (("resolve", "--by", " "), "--by must not be empty"),
        (("purge", "--caps", "--type", "x"), "--caps applies the configured caps and takes no filters (got --type)"),
        (("purge", "--caps", "--include-open"), "(got --include-open)"),
        (("explode",), "invalid choice: 'explode'"),
        ((), "the following arguments are required"),
    ],
)
def test_bad_input_is_a_command_error_with_a_clear_message(args, message):
    dead = letter()
    args = tuple(arg.replace("{id}", str(dead.pk)) for arg in args)
    with pytest.raises(CommandError) as error:
        run(*args)
    assert message in str(error.value)
    assert DeadLetter.objects.get().status == DeadLetterStatus.OPEN
    assert Job.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_real_command_exits_0_with_a_table_and_non_zero_on_bad_input():
    # Given a committed dead letter, and the command run as ops run it: a separate process
    dead = letter()
    env = {**os.environ, "DATABASE_URL": test_database_url()}

    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", "deadletters", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    listing = manage("list")
    assert listing.returncode == 0, listing.stderr
    assert str(dead.job_id) in listing.stdout and "diagnostics.fail" in listing.stdout
    assert listing.stdout.strip().endswith("1 dead letter.")
    unknown = manage("list", "--id", "424242")
    assert unknown.returncode == 1
    assert "no dead letter 424242" in unknown.stderr
    bad = manage("list", "--older-than", "soon")
    assert bad.returncode == 2
    assert "invalid duration 'soon'" in bad.stderr


# -- replay ------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_replay_dry_run_says_what_would_run_and_changes_nothing():
    runnable, unrunnable = letter(), poison_dead_letter()
    invalid = letter(payload={"mode": "explode"})
    out = run("replay", "--dry-run")
    assert f"would replay dead letter {runnable.pk}" in out
    assert f"refuse dead letter {unrunnable.pk}" in out and "names no known job type (billing.nonexistent)" in out
    assert f"refuse dead letter {invalid.pk}" in out and "payload.mode" in out
    assert "Would replay 1 dead letter; would refuse 2. Dry run: nothing was changed." in out
    assert set(DeadLetter.objects.values_list("status", flat=True)) == {DeadLetterStatus.OPEN}
    assert not Job.objects.filter(retry_of__isnull=False).exists()


@pytest.mark.django_db
def test_replay_runs_open_dead_letters_again_once_each_and_skips_closed_ones():
    first, second = letter(age=timedelta(minutes=2)), letter(age=timedelta(minutes=1))
    resolved = letter(status=DeadLetterStatus.RESOLVED)
    out = run("replay")
    jobs = {dead.pk: Job.objects.get(retry_of=dead.job_id) for dead in (first, second)}
    assert out.splitlines()[:2] == [
        f"replay dead letter {first.pk} (diagnostics.fail, job {first.job_id}) -> job {jobs[first.pk].pk}",
        f"replay dead letter {second.pk} (diagnostics.fail, job {second.job_id}) -> job {jobs[second.pk].pk}",
    ]
    assert out.splitlines()[-1] == "Replayed 2 dead letters."
    assert not Job.objects.filter(retry_of=resolved.job_id).exists()
    # Replaying them again, by id, runs nothing twice
    again = run("replay", "--id", str(first.pk), "--id", str(resolved.pk))
    assert (
        f"dead letter {first.pk} (diagnostics.fail, job {first.job_id}): it is replayed as job {jobs[first.pk].pk}"
        in again
    )
    assert f"skip   dead letter {resolved.pk} (diagnostics.fail, job {resolved.job_id}): it is resolved" in again
    assert "Replayed 0 dead letters; skipped 2 (not open)." in again
    assert Job.objects.filter(retry_of__isnull=False).count() == 2


@pytest.mark.django_db
def test_replay_with_an_edited_payload_runs_it_for_one_dead_letter():
    dead = letter()
    run("replay", "--id", str(dead.pk), "--payload", '{"mode": "times", "times": 0}')
    replayed = Job.objects.get(retry_of=dead.job_id)
    assert (replayed.payload["mode"], replayed.payload["times"]) == ("times", 0)
    assert DeadLetter.objects.get(pk=dead.pk).replay_job_id == replayed.pk


@pytest.mark.django_db
def test_replay_with_an_invalid_edited_payload_exits_non_zero_and_runs_nothing():
    dead = letter()
    with pytest.raises(CommandError, match="could not replay 1 dead letter"):
        run("replay", "--id", str(dead.pk), "--payload", '{"mode": "explode"}')
    assert DeadLetter.objects.get(pk=dead.pk).status == DeadLetterStatus.OPEN
    assert not Job.objects.filter(retry_of__isnull=False).exists()


@pytest.mark.django_db
def test_replay_replays_what_it_can_and_exits_non_zero_for_the_rest():
    runnable, unrunnable = letter(), poison_dead_letter()
    err = StringIO()
    with pytest.raises(CommandError, match="could not replay 1 dead letter"):
        call_command("deadletters", "replay", stdout=StringIO(), stderr=err)
    assert f"refuse dead letter {unrunnable.pk}" in err.getvalue()
    assert DeadLetter.objects.get(pk=runnable.pk).status == DeadLetterStatus.REPLAYED
    assert DeadLetter.objects.get(pk=unrunnable.pk).status == DeadLetterStatus.OPEN


@pytest.mark.django_db
def test_replay_takes_the_oldest_first_up_to_its_limit():
    oldest, middle, _newest = (letter(age=timedelta(minutes=m)) for m in (3, 2, 1))
    run("replay", "--limit", "2", "--type", "diagnostics.fail")
    replayed = set(DeadLetter.objects.filter(status=DeadLetterStatus.REPLAYED).values_list("pk", flat=True))
    assert replayed == {oldest.pk, middle.pk}


# -- resolve -----------------------------------------------------------------------------------
@pytest.mark.django_db
def test_resolve_closes_matching_open_dead_letters_and_records_who():
    unknown, kept = poison_dead_letter(), letter()
    out = run("resolve", "--reason", "unknown_task", "--by", "ops-oncall")
    assert out.splitlines() == [
        f"resolve dead letter {unknown.pk} (billing.nonexistent, message {unknown.message_key})",
        "Resolved 1 dead letter.",
    ]
    resolved = DeadLetter.objects.get(pk=unknown.pk)
    assert (resolved.status, resolved.resolved_by) == (DeadLetterStatus.RESOLVED, "ops-oncall")
    assert resolved.resolved_at is not None
    assert DeadLetter.objects.get(pk=kept.pk).status == DeadLetterStatus.OPEN


@pytest.mark.django_db
def test_resolve_dry_run_changes_nothing_and_replayed_ones_are_skipped():
    dead, replayed = letter(), letter()
    run("replay", "--id", str(replayed.pk))
    out = run("resolve", "--dry-run", "--status", "all")
    assert f"would resolve dead letter {dead.pk}" in out
    assert f"skip   dead letter {replayed.pk}" in out and "replayed" in out
    assert "Would resolve 1 dead letter; skipped 1 (not open). Dry run: nothing was changed." in out
    assert DeadLetter.objects.get(pk=dead.pk).status == DeadLetterStatus.OPEN
    run("resolve")
    assert DeadLetter.objects.get(pk=dead.pk).resolved_by == login_name()
    assert DeadLetter.objects.get(pk=replayed.pk).status == DeadLetterStatus.REPLAYED


# -- purge -------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_purge_refuses_open_dead_letters_unless_told_to_include_them():
    dead = letter()
    for args in (("--status", "open"), ("--id", str(dead.pk)), ("--status", "all")):
        with pytest.raises(CommandError, match=r"refusing to purge 1 open dead letter: .* pass --include-open"):
            run("purge", *args)
    assert DeadLetter.objects.filter(pk=dead.pk).exists()
    assert "Purged 1 dead letter." in run("purge", "--include-open", "--id", str(dead.pk))
    assert not DeadLetter.objects.exists()


@pytest.mark.django_db
def test_purge_deletes_closed_dead_letters_in_batches_and_keeps_open_ones_and_alerts():
    open_one = letter()
    closed = [letter(status=s) for s in [DeadLetterStatus.RESOLVED] * 3 + [DeadLetterStatus.REPLAYED] * 2]
    Alert.objects.create(key="k", channel="webhook", dead_letter=closed[0], subject="s", text="t")
    out = run("purge", "--batch-size", "2")
    assert out.splitlines() == [
        "deleted 2 (total 2)",
        "deleted 2 (total 4)",
        "deleted 1 (total 5)",
        "Purged 5 dead letters.",
    ]
    assert list(DeadLetter.objects.values_list("pk", flat=True)) == [open_one.pk]
    assert Alert.objects.get().dead_letter_id is None  # the alert history stays


@pytest.mark.django_db
def test_purge_dry_run_counts_by_status_and_deletes_nothing():
    letter()
    letter(status=DeadLetterStatus.RESOLVED, age=timedelta(days=40))
    letter(status=DeadLetterStatus.REPLAYED, age=timedelta(days=40))
    letter(status=DeadLetterStatus.RESOLVED)
    out = run("purge", "--older-than", "30d", "--dry-run")
    assert out.strip() == "Dry run: would purge 2 dead letters (replayed: 1, resolved: 1)."
    out = run("purge", "--include-open", "--dry-run")
    assert out.strip() == "Dry run: would purge 4 dead letters (open: 1, replayed: 1, resolved: 2)."
    assert DeadLetter.objects.count() == 4


@pytest.mark.django_db
def test_purge_filters_and_limit_narrow_what_is_deleted():
    old = [letter(status=DeadLetterStatus.RESOLVED, age=timedelta(days=d)) for d in (30, 20, 10)]
    recent = letter(status=DeadLetterStatus.RESOLVED)
    run("purge", "--older-than", "7d", "--limit", "2")
    assert set(DeadLetter.objects.values_list("pk", flat=True)) == {old[2].pk, recent.pk}


@pytest.mark.django_db
def test_purge_caps_applies_the_configured_age_and_row_caps(settings):
    settings.TERMINUS_DEAD_LETTER_MAX_AGE_DAYS = 30
    settings.TERMINUS_DEAD_LETTER_MAX_ROWS = 2
    aged_closed = letter(status=DeadLetterStatus.RESOLVED, age=timedelta(days=31))
    aged_open = letter(age=timedelta(days=31))  # open: dropped only by the row cap, oldest first
    middle = letter(age=timedelta(days=5))
    newest = letter()
    dry = run("purge", "--caps", "--dry-run")
    assert "would purge 1 dead letter past the age cap and 1 dead letter over the row cap" in dry
    assert DeadLetter.objects.count() == 4
    out = run("purge", "--caps")
    assert out.startswith("Purged 2 dead letters to keep within the caps (TERMINUS_DEAD_LETTER_MAX_AGE_DAYS=30")
    remaining = set(DeadLetter.objects.values_list("pk", flat=True))
    assert remaining == {middle.pk, newest.pk}
    assert aged_closed.pk not in remaining and aged_open.pk not in remaining


# -- end to end, with a real worker --------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_a_real_dead_letter_replayed_from_the_command_line_runs_to_success(worker):
    # Given a job that failed for good on a real worker and was dead-lettered
    failed = submit("diagnostics.fail", {"mode": "permanent", "message": "bad input"})
    assert wait_terminal(failed.pk).status == Status.FAILED
    dead = wait_for(lambda: DeadLetter.objects.filter(job_id=failed.pk).first(), what="the dead letter")
    assert listed("--type", "diagnostics.fail") == [dead.pk]
    # When ops replay it with a corrected payload
    out = run("replay", "--job", str(failed.pk), "--payload", '{"mode": "times", "times": 0}')
    # Then the new job runs on the worker, linked to the failed one
    replay_job = Job.objects.get(retry_of=failed.pk)
    assert f"-> job {replay_job.pk}" in out
    done = wait_terminal(replay_job.pk)
    assert (done.status, done.attempts) == (Status.SUCCEEDED, 1)
    assert listed("--status", "replayed") == [dead.pk]
