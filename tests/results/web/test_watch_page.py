"""The /jobs/ page end to end: real headless Chromium, real gunicorn, real worker, real database.

Each test submits a job through the page, watches it to its end, and then checks two things:
the page shows the right final state with the spinner gone, and it stopped polling. After the
end, no request to /api/ is made and none is left open. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from playwright.sync_api import expect

from results.models import Job, Status
from tests.helpers import WorkerProcess
from tests.results.web.helpers import PASSWORD, Traffic, WebServer, artifact

#: How long the page is watched for requests after the end: several times the longest gap the
#: client would leave between polls if it kept going (it asks again at once in long-poll mode).
QUIET_MS = 2500
#: watchJob's default: failures in a row before it gives up with ServerUnreachableError.
MAX_ERRORS = 5


def sign_in(page: Any, web: WebServer, username: str = "ada") -> None:
    """Open /jobs/, get sent to the sign-in form, sign in, land back on /jobs/."""
    page.goto(f"{web.url}/jobs/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/jobs/$"))
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("#login-form button[type=submit]")
    expect(page).to_have_url(f"{web.url}/jobs/")
    expect(page.locator("#signed-in-as")).to_have_text(username)


def submit(page: Any, type_name: str, payload: str) -> str:
    """Submit through the form; the page moves to /jobs/<id>/ and starts watching. Returns the id."""
    page.select_option("#job-type-select", type_name)
    page.fill("#payload-input", payload)
    page.click("#submit-button")
    expect(page).to_have_url(re.compile(r"/jobs/[0-9a-f-]{36}/$"))
    job_id = page.url.rstrip("/").rsplit("/", 1)[1]
    uuid.UUID(job_id)
    expect(page.locator("#job-id")).to_have_text(job_id)
    return job_id


def wait_until_ended(page: Any, phase: str = "done") -> None:
    expect(page.locator("#watch")).to_have_attribute("data-phase", phase, timeout=60_000)
    expect(page.locator("#job-spinner")).to_be_hidden()


def assert_stopped_polling(page: Any, traffic: Traffic, job_id: str, status: str) -> None:
    """After the end, no new request to the API, and none left open."""
    # the list refreshes once when the watched job's status changes: let that settle first
    expect(page.locator(f'#job-list tr[data-job-id="{job_id}"] .badge')).to_have_text(status)
    mark = len(traffic.requests)
    page.wait_for_timeout(QUIET_MS)
    assert traffic.api(mark) == [], [request.url for request in traffic.api(mark)]
    assert traffic.open(traffic.api()) == [], [request.url for request in traffic.open(traffic.api())]


def attempt_outcomes(page: Any) -> list[str]:
    return page.locator("#job-attempts tbody tr td:nth-child(2)").all_inner_texts()


def stored_outcomes(job_id: str) -> list[str]:
    """The attempt history as the database recorded it."""
    return [attempt.outcome for attempt in Job.objects.get(pk=job_id).attempt_history()]


def assert_page_shows_the_stored_history(page: Any, job: Job) -> None:
    """Attempt k of n and one row per recorded attempt, as stored. Jobs run at least once: a
    redelivered message legitimately adds a "lost" row, so the record is the reference."""
    expect(page.locator("#job-attempt")).to_have_text(f"{job.attempts} of {job.max_retries + 1}")
    assert attempt_outcomes(page) == stored_outcomes(str(job.pk))


# -- the four endings the issue names ----------------------------------------------------------
def test_a_job_that_succeeds_shows_progress_then_its_result_and_polling_stops(
    page: Any, web: WebServer, web_user: Any, worker: WorkerProcess
) -> None:
    # Given a signed-in user watching a job that runs for a few seconds, reporting progress
    traffic = Traffic(page)
    sign_in(page, web)
    job_id = submit(page, "diagnostics.sleep", '{"seconds": 4, "heartbeat_every": 0.5}')
    # Then the page shows it running with partial progress while it runs
    page.wait_for_function(
        "() => { const p = document.querySelector('#job-progress'); return !p.hidden && p.value > 0 && p.value < 1; }",
        timeout=60_000,
    )
    expect(page.locator("#job-status")).to_have_text("running")
    expect(page.locator("#job-spinner")).to_be_visible()
    page.screenshot(path=artifact("succeeds-1-running.png"), full_page=True)
    # And ends succeeded with its result, the spinner gone
    wait_until_ended(page)
    expect(page.locator("#job-status")).to_have_text("succeeded")
    expect(page.locator("#watch-outcome")).to_contain_text("Succeeded")
    expect(page.locator("#job-result")).to_contain_text('"slept"')
    expect(page.locator("#job-progress-text")).to_have_text("100 %")
    assert attempt_outcomes(page) == stored_outcomes(job_id)
    assert attempt_outcomes(page)[-1] == "succeeded"
    page.screenshot(path=artifact("succeeds-2-done.png"), full_page=True)
    assert_stopped_polling(page, traffic, job_id, "succeeded")
    # And it long-polled with ETags: one request per change at most, not one per second
    job = Job.objects.get(pk=job_id)
    assert job.status == Status.SUCCEEDED
    polls = traffic.polls(job_id)
    assert "wait=" not in polls[0].url  # the first answer comes at once
    assert all(poll.url.endswith("?wait=30") for poll in polls[1:]), [poll.url for poll in polls]
    assert all(poll.headers.get("if-none-match", "").startswith(f'"{job_id}-') for poll in polls[1:])
    assert 2 <= len(polls) <= job.version + 1, f"{len(polls)} polls for {job.version} versions"


def test_a_job_that_fails_for_good_shows_every_retry_and_its_error(
    page: Any, web: WebServer, web_user: Any, worker: WorkerProcess
) -> None:
    # Given a job that fails with a transient error on every attempt (5 retries, then it fails)
    traffic = Traffic(page)
    sign_in(page, web)
    job_id = submit(page, "diagnostics.fail", '{"mode": "always", "message": "payment provider down"}')
    # Then the page ends on "failed" with the error and the whole retry history
    wait_until_ended(page)
    job = Job.objects.get(pk=job_id)
    assert job.status == Status.FAILED
    assert job.error_type == "TransientError"
    assert job.error_message.startswith("payment provider down (attempt ")
    assert job.attempts >= job.max_retries + 1 == 6
    expect(page.locator("#job-status")).to_have_text("failed")
    expect(page.locator("#watch-outcome")).to_have_text(
        f"Failed after {job.attempts} of 6 attempts: TransientError: {job.error_message}"
    )
    expect(page.locator("#job-error")).to_have_text(f"Error: TransientError: {job.error_message}")
    expect(page.locator("#job-result-box")).to_be_hidden()
    expect(page.locator("#cancel-job")).to_be_hidden()
    assert_page_shows_the_stored_history(page, job)
    outcomes = attempt_outcomes(page)
    assert outcomes[-1] == "failed"
    assert outcomes.count("retried") >= 4, outcomes
    assert set(outcomes[:-1]) <= {"retried", "lost"}, outcomes
    page.screenshot(path=artifact("fails-for-good.png"), full_page=True)
    assert_stopped_polling(page, traffic, job_id, "failed")


def test_a_job_that_retries_then_succeeds_shows_its_attempts_and_result(
    page: Any, web: WebServer, web_user: Any, worker: WorkerProcess
) -> None:
    # Given a job that fails its first two attempts with a transient error, then succeeds
    traffic = Traffic(page)
    sign_in(page, web)
    job_id = submit(page, "diagnostics.fail", '{"mode": "times", "times": 2}')
    # Then the page ends on "succeeded" with the result of the attempt that got through
    wait_until_ended(page)
    job = Job.objects.get(pk=job_id)
    assert job.status == Status.SUCCEEDED
    assert job.result["attempt"] >= 3
    expect(page.locator("#job-status")).to_have_text("succeeded")
    expect(page.locator("#job-result")).to_have_text(json.dumps(job.result, indent=2))
    expect(page.locator("#job-error")).to_be_hidden()
    assert_page_shows_the_stored_history(page, job)
    outcomes = attempt_outcomes(page)
    assert outcomes[-1] == "succeeded"
    assert outcomes.count("retried") >= 1, outcomes
    expect(page.locator("#job-attempts tbody")).to_contain_text("TransientError: diagnostics failure (attempt ")
    page.screenshot(path=artifact("retries-then-succeeds.png"), full_page=True)
    assert_stopped_polling(page, traffic, job_id, "succeeded")


def test_when_the_server_goes_away_mid_poll_the_page_says_so_and_stops_polling(
    page: Any, start_web: Any, web_user: Any, worker: WorkerProcess
) -> None:
    # Given a page long-polling a running job
    web = start_web()
    traffic = Traffic(page)
    sign_in(page, web)
    job_id = submit(page, "diagnostics.sleep", '{"seconds": 6, "heartbeat_every": 0.5}')
    expect(page.locator("#job-status")).to_have_text("running", timeout=60_000)
    # When the web server dies (SIGKILL: open connections drop, new ones are refused)
    web.kill()
    killed_at = len(traffic.requests)
    # Then the page retries a bounded number of times, says the server can't be reached, and stops
    wait_until_ended(page, "unreachable")
    expect(page.locator("#watch-outcome")).to_contain_text("The server can't be reached")
    expect(page.locator("#watch-outcome")).to_contain_text(f"stopped after {MAX_ERRORS} failed tries in a row")
    expect(page.locator("#watch-connection")).to_have_text("Not watching: the server can't be reached.")
    expect(page.locator("#watch-again")).to_be_visible()
    page.screenshot(path=artifact("server-gone.png"), full_page=True)
    mark = len(traffic.requests)
    page.wait_for_timeout(QUIET_MS)
    assert traffic.api(mark) == [], [request.url for request in traffic.api(mark)]
    assert traffic.open(traffic.api()) == []
    failed_polls = [request for request in traffic.failed if request in traffic.polls(job_id)]
    assert len(failed_polls) == MAX_ERRORS, [request.url for request in failed_polls]
    assert len(traffic.polls(job_id, killed_at)) <= MAX_ERRORS  # the in-flight poll and the retries
    # And when the server is back, "Try again" picks the job up in the state it reached meanwhile
    start_web(port=web.port)
    page.click("#watch-again")
    wait_until_ended(page)
    expect(page.locator("#job-status")).to_have_text("succeeded")
    expect(page.locator("#watch-outcome")).to_contain_text("Succeeded")
    page.screenshot(path=artifact("server-back.png"), full_page=True)
    assert Job.objects.get(pk=job_id).status == Status.SUCCEEDED


# -- the rest of the page ----------------------------------------------------------------------
def test_cancelling_a_running_job_from_the_page_ends_the_watch_as_cancelled(
    page: Any, web: WebServer, web_user: Any, worker: WorkerProcess
) -> None:
    traffic = Traffic(page)
    sign_in(page, web)
    job_id = submit(page, "diagnostics.sleep", '{"seconds": 60, "heartbeat_every": 0.5}')
    expect(page.locator("#job-status")).to_have_text("running", timeout=60_000)
    page.click("#cancel-job")
    wait_until_ended(page)
    expect(page.locator("#job-status")).to_have_text("cancelled")
    expect(page.locator("#watch-outcome")).to_have_text("Cancelled: cancelled from the jobs page")
    assert_stopped_polling(page, traffic, job_id, "cancelled")
    assert Job.objects.get(pk=job_id).status == Status.CANCELLED


def test_a_bad_submission_shows_the_apis_field_errors_and_creates_nothing(
    page: Any, web: WebServer, web_user: Any
) -> None:
    sign_in(page, web)
    expect(page.locator("#job-list-empty")).to_be_visible()
    # not JSON at all: refused in the page
    page.select_option("#job-type-select", "diagnostics.sleep")
    page.fill("#payload-input", "{seconds: 3")
    page.click("#submit-button")
    expect(page.locator("#submit-error")).to_contain_text("The payload is not valid JSON")
    # JSON the job type refuses: the API's 400 with its field errors
    page.fill("#payload-input", '{"seconds": -1}')
    page.click("#submit-button")
    expect(page.locator("#submit-error")).to_contain_text("Not submitted: Invalid input.")
    expect(page.locator("#submit-error li")).to_contain_text("payload.seconds:")
    page.screenshot(path=artifact("bad-submission.png"), full_page=True)
    expect(page).to_have_url(f"{web.url}/jobs/")
    expect(page.locator("#watch")).to_be_hidden()
    assert not Job.objects.exists()
