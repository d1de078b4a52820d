"""The *Cron runs* admin: each cron's schedule (seconds or a crontab, and the setting that re-times it)
and when it is due next, above the run history."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

pytestmark = pytest.mark.django_db


def schedule_row(html: str, cron: str) -> str:
    """The schedule table's row of ``cron``."""
    found = re.search(rf'<tr>\s*<td><a href="\?cron={re.escape(cron)}">.*?</tr>', html, re.DOTALL)
    assert found, f"no schedule row for {cron}"
    return found.group(0)


def test_the_admin_shows_each_crons_schedule_and_when_it_is_due_next(admin_client, settings):
    # Given the cleanup re-timed to a crontab, the reaper on its default 60 s
    settings.TERMINUS_CLEANUP_INTERVAL = "0 3 * * *"
    page = admin_client.get(reverse("admin:results_cronrun_changelist"))
    assert page.status_code == 200
    html = page.content.decode()
    # Then the crontab is shown as written, in its zone, with the variable that re-times it
    cleanup = schedule_row(html, "cleanup")
    assert "<code>0 3 * * *</code> <small>(crontab, UTC)</small> <small>(TERMINUS_CLEANUP_INTERVAL)</small>" in cleanup
    # And it is due next at the coming 03:00
    now = timezone.now()
    three = now.replace(hour=3, minute=0, second=0, microsecond=0)
    due = three if three > now else three + timedelta(days=1)
    assert f'<td class="cron-next-due">{due:%Y-%m-%d %H:%M:%S} UTC</td>' in cleanup
    # An interval is shown as seconds, due at its next whole slot
    reaper = schedule_row(html, "reaper")
    assert "every 60 s <small>(TERMINUS_REAPER_INTERVAL)</small>" in reaper
    next_due = re.search(r'<td class="cron-next-due">(.*?) UTC</td>', reaper).group(1)
    assert datetime.strptime(next_due, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).second == 0
    assert html.count('class="cron-next-due"') == html.count('class="cron-schedule"') >= 5
