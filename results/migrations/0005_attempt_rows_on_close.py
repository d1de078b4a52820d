"""Attempt rows are now written when an attempt ends; the running attempt lives on the job row.

Rows left ``running`` by the earlier scheme are settled here: the running job's current attempt
is dropped (its row is written when it ends), and any other open row, whose attempt can no longer
be running, is recorded as lost.
"""

from django.db import migrations
from django.db.models import F, OuterRef, Subquery
from django.db.models.functions import Coalesce, Now


def settle_open_rows(apps, schema_editor):
    Job = apps.get_model("results", "Job")
    JobAttempt = apps.get_model("results", "JobAttempt")
    open_rows = JobAttempt.objects.filter(outcome="running")
    open_rows.filter(job__status="running", job__attempts=F("number")).delete()
    finished = Job.objects.filter(pk=OuterRef("job_id")).values("finished_at")
    open_rows.update(
        outcome="lost",
        finished_at=Coalesce(Subquery(finished[:1]), Now()),
        error_type="worker_lost",
        error_message="the attempt ended without a record of how",
    )


class Migration(migrations.Migration):
    dependencies = [("results", "0004_fewer_indexes")]

    operations = [migrations.RunPython(settle_open_rows, migrations.RunPython.noop)]
