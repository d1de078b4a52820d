"""Alert channels from apprise URLs (TERMINUS_ALERT_URLS): real deliveries to a local HTTP sink through
apprise's JSON webhook, with the throttle, the Alert rows and the outbound policy as for every channel."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from project.settings import url_list
from results.models import Alert, AlertStatus, DeadLetter, Job, Status
from tasks.failure import apprise_urls
from tasks.failure.alerting import AlertError, alert_dead_letter, deliver
from tasks.failure.dead_letters import message_for_job, record_dead_letter
from tasks.failure.ops_alerts import ops_alert
from tests.alert_sink import AlertSink
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sink() -> Iterator[AlertSink]:
    """A sink of this test's own (the session's is the shared worker's Slack webhook)."""
    receiver = AlertSink().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def apprise_only(settings: Any, sink: AlertSink) -> str:
    """TERMINUS_ALERT_URLS = one apprise JSON webhook on the sink; the Slack webhook and mail off."""
    url = f"json://127.0.0.1:{sink.server.server_address[1]}/apprise"
    settings.TERMINUS_ALERT_URLS = [url]
    settings.TERMINUS_ALERT_WEBHOOK_URL = None
    settings.TERMINUS_ALERT_MAIL = False
    settings.TERMINUS_OUTBOUND_ALLOW = ["127.0.0.1/32"]
    return url


def failed_letter(message: str = "boom", error_type: str = "PermanentError") -> DeadLetter:
    job = Job.objects.create(
        type="diagnostics.fail", status=Status.FAILED, terminal_by="2030-01-01T00:00:00Z", error_type=error_type
    )
    return DeadLetter.objects.create(
        message_key=str(job.pk),
        job=job,
        task_name=job.type,
        reason="non_retryable",
        error_type=error_type,
        error_message=message,
    )


def apprise_posts(sink: AlertSink) -> list[dict[str, Any]]:
    """What apprise's JSON webhook posted ({"version", "title", "message", "type", ...})."""
    with sink.lock:
        return [post for post in sink.webhooks if "message" in post and "terminus" not in post]


def test_a_dead_letter_reaches_an_apprise_json_webhook_once(apprise_only: str, sink: AlertSink):
    # Given a dead letter
    letter = failed_letter("disk full")
    # When it is alerted, twice (the alerting task retried)
    alert_dead_letter(letter)
    alert_dead_letter(letter)
    # Then the JSON webhook got one alert, typed as a failure, naming the job and the error
    (post,) = apprise_posts(sink)
    assert post["type"] == "failure"
    assert post["title"] == "[Terminus] diagnostics.fail failed: PermanentError"
    assert str(letter.job_id) in post["message"] and "disk full" in post["message"]
    # And it is recorded as one sent Alert row for that URL's channel, whose name carries no secret
    (alert,) = Alert.objects.filter(dead_letter=letter)
    assert alert.channel == apprise_urls.channel_name(apprise_only)
    assert alert.channel.startswith("apprise-json-") and "127.0.0.1" not in alert.channel
    assert alert.status == AlertStatus.SENT and alert.sent_at is not None


def test_the_slack_webhook_keeps_working_beside_apprise_urls(apprise_only: str, sink: AlertSink, settings):
    settings.TERMINUS_ALERT_WEBHOOK_URL = f"{sink.url}/slack"
    letter = failed_letter()
    alert_dead_letter(letter)
    assert len(apprise_posts(sink)) == 1
    assert [hook["terminus"]["dead_letter"] for hook in sink.webhooks if "terminus" in hook] == [letter.pk]
    assert sorted(Alert.objects.values_list("channel", flat=True)) == sorted(
        ["webhook", apprise_urls.channel_name(apprise_only)]
    )


def test_a_burst_in_one_window_gives_one_apprise_alert(apprise_only: str, sink: AlertSink, settings):
    settings.TERMINUS_ALERT_WINDOW = 600
    for n in range(3):
        alert_dead_letter(failed_letter(f"burst {n}"))
    assert len(apprise_posts(sink)) == 1, "the throttle is the same for every channel"


def test_each_apprise_url_is_a_channel_retried_alone(apprise_only: str, sink: AlertSink, settings):
    # Given two URLs, and the first one's receiver failing once (503)
    other = f"json://127.0.0.1:{sink.server.server_address[1]}/other"
    settings.TERMINUS_ALERT_URLS = [apprise_only, other]
    sink.fail_next = 1
    letter = failed_letter()
    # When the alert is sent: one channel failed, and the task is told to retry
    with pytest.raises(AlertError):
        alert_dead_letter(letter)
    assert len(apprise_posts(sink)) == 1
    failed = Alert.objects.get(dead_letter=letter, status=AlertStatus.FAILED)
    assert not failed.error.startswith("permanent: ") and "did not deliver" in failed.error
    # Then the retry sends to the failed channel only
    alert_dead_letter(letter)
    assert len(apprise_posts(sink)) == 2
    assert set(Alert.objects.filter(dead_letter=letter).values_list("status", flat=True)) == {AlertStatus.SENT}


def test_the_outbound_policy_refuses_an_internal_webhook_for_good(apprise_only: str, sink: AlertSink, settings):
    # Given the production default: only public addresses, and the webhook on loopback
    settings.TERMINUS_OUTBOUND_ALLOW = []
    letter = failed_letter()
    # When the alert is sent
    alert_dead_letter(letter)  # a permanent refusal: nothing to retry, the task does not raise
    # Then nothing was posted, and the row says why and how to allow it
    assert apprise_posts(sink) == []
    alert = Alert.objects.get(dead_letter=letter)
    assert alert.status == AlertStatus.FAILED
    assert alert.error.startswith("permanent: refused to connect to 127.0.0.1")
    assert "TERMINUS_OUTBOUND_ALLOW" in alert.error


def test_an_ops_alert_and_its_recovery_reach_apprise(apprise_only: str, sink: AlertSink):
    ops_alert("health:drill", "drill is failing", "the drill check failed")
    ops_alert("health:drill", "drill recovered", "the drill check passed", recovered=True)
    posts = apprise_posts(sink)
    assert [(post["title"], post["type"]) for post in posts] == [
        ("[Terminus] drill is failing", "warning"),
        ("[Terminus] drill recovered", "warning"),
    ]


def test_a_url_apprise_cannot_use_stops_the_process_naming_the_setting_not_the_secret():
    with pytest.raises(ImproperlyConfigured) as refused:
        apprise_urls._targets(("json://127.0.0.1/ok", "nosuchservice://s3cret-token@x"))
    assert "TERMINUS_ALERT_URLS: entry 2 (nosuchservice://…)" in str(refused.value)
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize(
    ("value", "urls"),
    [
        ("json://a/x", ["json://a/x"]),
        ("json://a/x, slack://T/B/C", ["json://a/x", "slack://T/B/C"]),
        ("json://a/x slack://T/B/C\nmsteams://t/o/k,", ["json://a/x", "slack://T/B/C", "msteams://t/o/k"]),
        ("mailto://u:p@example.com?to=a@x.org,b@y.org", ["mailto://u:p@example.com?to=a@x.org,b@y.org"]),
        (" , ", []),
        (None, []),
    ],
)
def test_alert_urls_split_on_commas_and_spaces_but_not_inside_a_url(value: str | None, urls: list[str]):
    assert url_list(value) == urls


def test_a_worker_delivers_a_dead_letter_through_apprise(start_worker, drill_queue: str, sink: AlertSink):
    # Given a worker whose only alert channel is an apprise JSON webhook
    url = f"json://127.0.0.1:{sink.server.server_address[1]}/worker"
    start_worker(drill_queue, TERMINUS_ALERT_URLS=url, TERMINUS_ALERT_WEBHOOK_URL="", TERMINUS_ALERT_MAIL="false")
    job = Job.objects.create(
        type="diagnostics.fail",
        status=Status.FAILED,
        terminal_by="2030-01-01T00:00:00Z",
        error_type="PermanentError",
        error_message=f"worker drill {uuid.uuid4().hex[:6]}",
    )
    # When it records the job's dead letter (the task the dead-letter queue runs)
    record_dead_letter.apply_async(kwargs=message_for_job(job, reason="non_retryable"), queue=drill_queue)
    # Then the alert arrives through apprise, and is recorded as sent
    (post,) = wait_for(lambda: apprise_posts(sink), what="the apprise alert")
    assert str(job.pk) in post["message"] and job.error_message in post["message"]
    wait_for(
        lambda: Alert.objects.filter(
            dead_letter__job=job, channel=apprise_urls.channel_name(url), status=AlertStatus.SENT
        ).exists(),
        what="the alert recorded as sent",
    )


def test_deliver_skips_an_alert_whose_channel_is_no_longer_configured(apprise_only: str, sink: AlertSink, settings):
    letter = failed_letter()
    alert = Alert.objects.create(
        key="k", channel=apprise_urls.channel_name("json://gone/x"), dead_letter=letter, subject="s", text="t"
    )
    deliver([alert])
    assert apprise_posts(sink) == []
