"""The record stores what it is given, made storable: NUL, invalid unicode, NaN and huge results never
make a terminal write fail (which would leave the job open)."""

from __future__ import annotations

import pytest
from django.db import connection

from results.models import DeadLetter, Job, Status
from results.storable import MARKER, storable_json, storable_text
from tasks.runtime.base import TrackedTask
from tasks.submit.outbox import submit
from tests.helpers import wait_for


def running_job() -> Job:
    job = submit("diagnostics.sleep", {})
    assert Job(pk=job.pk).mark_started(worker="w@test")
    return job


def test_text_is_escaped_and_cut_with_a_marker():
    assert storable_text("a\x00b") == "a\\x00b"
    assert storable_text("bad \udc80 half") == "bad \\udc80 half"
    cut = storable_text("x" * 50, 10)
    assert cut.startswith("x" * 10) and "40 characters cut" in cut


def test_json_is_cleaned_and_an_oversized_result_becomes_a_marker_with_its_size():
    assert storable_json({"k\x00": ["\x00", float("nan"), float("inf"), 1]}) == {"k\\x00": ["\\x00", "nan", "inf", 1]}
    big = storable_json({"blob": "y" * 5000}, limit_bytes=1000)
    assert big[MARKER].startswith("5012 bytes of JSON") and big["bytes"] == 5012
    assert big["preview"].startswith('{"blob": "yyy')
    deep: list = []
    cursor = deep
    for _ in range(200):
        cursor.append([])
        cursor = cursor[0]
    assert "not JSON that can be stored" in storable_json(deep)[MARKER]


@pytest.mark.django_db
def test_a_result_with_nul_invalid_unicode_and_nan_is_stored_and_the_job_succeeds():
    job = running_job()
    assert Job(pk=job.pk).mark_succeeded(result={"text": "a\x00b", "half": "\udc80", "n": float("nan")})
    stored = Job.objects.get(pk=job.pk)
    assert stored.status == Status.SUCCEEDED
    assert stored.result == {"text": "a\\x00b", "half": "\\udc80", "n": "nan"}


@pytest.mark.django_db
def test_a_failure_with_nul_in_its_message_and_traceback_is_stored(settings):
    job = running_job()
    assert Job(pk=job.pk).mark_failed(error_type="Boom\x00", error_message="bad\x00 \udc80", traceback="tb\x00")
    stored = Job.objects.get(pk=job.pk)
    assert (stored.status, stored.error_type, stored.error_message) == (Status.FAILED, "Boom\\x00", "bad\\x00 \\udc80")
    assert stored.traceback == "tb\\x00"


@pytest.mark.django_db
def test_a_result_over_the_limit_is_stored_as_a_marker(settings):
    settings.TERMINUS_MAX_RESULT_BYTES = 2048
    job = running_job()
    assert Job(pk=job.pk).mark_succeeded(result={"blob": "z" * 10_000})
    stored = Job.objects.get(pk=job.pk)
    assert stored.status == Status.SUCCEEDED
    assert stored.result[MARKER].startswith("10012 bytes of JSON, over the 2048-byte limit")


@pytest.mark.django_db(transaction=True)
def test_a_result_the_database_still_refuses_fails_the_job_saying_why(worker, monkeypatch):
    """If a result slipped past the cleaning and the database refused it, the job fails, stored, not open."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite stores NUL; PostgreSQL's refusal is the case to prove")
    # Given the cleaning switched off, so PostgreSQL itself refuses the NUL (a DataError)
    monkeypatch.setattr("results.models.jobs.storable_json", lambda value: value)
    job = running_job()
    task = TrackedTask()
    task.name = "diagnostics.sleep"
    # When the worker's success hook records the result
    task.on_success({"text": "\x00"}, str(job.pk), (), {})
    # Then the job is failed, with the reason stored, and dead-lettered (the shared worker records it)
    stored = Job.objects.get(pk=job.pk)
    assert (stored.status, stored.error_type) == (Status.FAILED, "ResultNotStorable")
    assert "could not be stored" in stored.error_message
    letter = wait_for(lambda: DeadLetter.objects.filter(job_id=job.pk).first(), what="the dead letter")
    assert letter.error_type == "ResultNotStorable"
