"""Secrets stay secret where people look: URL tokens leave no log line, a job type's secret fields are
redacted wherever a payload is shown, and alert text cannot ping a channel or hide a link.

Real worker (the shared one, with its alerts routed to the test sink), real receiver, real admin
and API pages.
"""

from __future__ import annotations

import pytest

from results.models import DeadLetter, Status
from tasks.submit.outbox import submit
from tests.factories import client_for
from tests.helpers import wait_for, wait_terminal

TOKEN = "url-token-S3CRET"
BEARER = "Bearer header-S3CRET"


@pytest.mark.rabbitmq
@pytest.mark.django_db(transaction=True)
def test_a_url_token_and_a_secret_header_appear_in_no_log_no_page_and_no_alert(
    worker, receiver, alert_sink, alice, admin_client
):
    # Given a receiver that rejects the delivery with text aimed at Slack
    recv = receiver((404, b"gone <!channel> <https://evil.example|click here>"))
    # When alice's webhook, with a token in its URL and a credential in its headers, fails for good
    job = submit(
        "webhook.deliver",
        {"url": f"{recv.url}?token={TOKEN}", "headers": {"Authorization": BEARER}},
        owner=alice,
        tenant=alice.membership.tenant,
    )
    done = wait_terminal(job.id)
    assert (done.status, done.error_type) == (Status.FAILED, "WebhookRejected")
    letter = wait_for(lambda: DeadLetter.objects.filter(job_id=job.id, alerted_at__isnull=False).first())
    # Then the worker's log has the request line without the token
    log = worker.log()
    assert recv.url.split("//", 1)[1].split("/", 1)[0] in log, "the delivery is logged"
    assert TOKEN not in log and BEARER not in log
    # And the dead letter shows the headers redacted, to its tenant and in the admin
    detail = client_for(alice).get(f"/api/dead-letters/{letter.pk}/")
    assert detail.status_code == 200
    assert detail.json()["body"]["kwargs"]["headers"] == {"Authorization": "[redacted]"}
    assert BEARER not in detail.content.decode()
    for page in (f"/admin/results/deadletter/{letter.pk}/change/", f"/admin/results/job/{job.id}/change/"):
        html = admin_client.get(page).content.decode()
        assert "[redacted]" in html and BEARER not in html, page
    # And the alert carries the receiver's text escaped: no channel ping, no disguised link
    hooks = wait_for(lambda: [h for h in alert_sink.webhooks if str(job.id) in json_text(h)], what="the alert")
    text = hooks[0]["text"]
    assert "&lt;!channel&gt;" in text and "<!channel>" not in text
    assert "&lt;https://evil.example|click here&gt;" in text


def json_text(hook: dict) -> str:
    return str(hook.get("text", "")) + str(hook.get("terminus", ""))
