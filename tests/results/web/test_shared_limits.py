"""Limits hold across web processes: the submit throttle is one budget for every gunicorn, and a user's
concurrent long polls are capped, each counted in the cache all processes share.

Real gunicorn processes on the test database; the cache is the database table (no CACHE_URL), the
development and default production store.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from results.models import Job
from tasks.submit.outbox import submit
from tests.factories import token_for

JOBS = "/api/jobs/"


@pytest.mark.django_db(transaction=True)
def test_the_submit_throttle_is_one_budget_across_two_web_processes(start_web, alice):
    # Given two web processes and a rate of 6 submissions a minute
    first, second = start_web(TERMINUS_SUBMIT_RATE="6/min"), start_web(TERMINUS_SUBMIT_RATE="6/min")
    headers = {"Authorization": f"Token {token_for(alice)}"}
    body = {"type": "diagnostics.sleep", "payload": {}}
    # When the user submits 3 through each
    answers = [httpx.post(f"{web.url}{JOBS}", json=body, headers=headers).status_code for web in (first, second) * 3]
    # Then all 6 are accepted, and the 7th (through either) is throttled with Retry-After
    assert answers == [202] * 6
    refused = httpx.post(f"{second.url}{JOBS}", json=body, headers=headers)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert Job.objects.count() == 6


@pytest.mark.django_db(transaction=True)
def test_a_user_holds_at_most_the_capped_number_of_long_polls(start_web, alice, drill_queue, settings):
    # Given a queued job nobody runs, and a web process (8 threads)
    web = start_web()
    job = submit("diagnostics.sleep", {}, owner=alice, tenant=alice.membership.tenant, queue=drill_queue)
    auth = {"Authorization": f"Token {token_for(alice)}"}
    # Polls that hold until the job changes from the version the client has now
    current = httpx.get(f"{web.url}{JOBS}{job.pk}/", headers=auth, timeout=30)
    headers = {**auth, "If-None-Match": current.headers["ETag"]}
    url = f"{web.url}{JOBS}{job.pk}/?wait=30"
    cap = settings.TERMINUS_LONG_POLL_PER_USER
    with ThreadPoolExecutor(cap) as pool:
        held = [pool.submit(httpx.get, url, headers=headers, timeout=60) for _ in range(cap)]
        time.sleep(2)  # every held poll has taken its slot
        # When one more arrives
        started = time.monotonic()
        extra = httpx.get(url, headers=headers, timeout=60)
        # Then it is refused at once with 429 and Retry-After, while the others keep holding
        assert extra.status_code == 429, extra.text
        assert time.monotonic() - started < 5 and extra.headers["Retry-After"] == "1"
        assert not any(poll.done() for poll in held)
        # And once the job changes, the held polls answer and free their slots
        assert Job(pk=job.pk).mark_cancelled(reason="test")
        assert [poll.result().status_code for poll in held] == [200] * cap
    assert httpx.get(f"{web.url}{JOBS}{job.pk}/?wait=1", headers=auth, timeout=30).status_code == 200
