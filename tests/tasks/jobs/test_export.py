"""export.jobs run by a real worker: tenant scope, columns, filters, overwrite on re-run, heartbeats."""

from __future__ import annotations

import csv
import io
import json
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.utils import timezone

from results.models import Job, Membership, Status, Tenant
from tasks.jobs.export import COLUMNS, HEARTBEAT_EVERY
from tasks.submit.outbox import dispatch, submit
from tasks.submit.validation import SubmissionError, validate_payload
from tests.helpers import wait_terminal

pytestmark = pytest.mark.django_db(transaction=True)


def make_jobs(count: int, **fields: Any) -> list[Job]:
    now = timezone.now()
    defaults: dict[str, Any] = {"type": "diagnostics.sleep", "terminal_by": now + timedelta(hours=1)}
    return Job.objects.bulk_create(Job(**{**defaults, **fields}) for _ in range(count))


def ids(jobs: list[Job]) -> set[str]:
    return {str(job.pk) for job in jobs}


def read_export(job: Job) -> str:
    with default_storage.open(job.result["path"], "rb") as exported:
        return exported.read().decode("utf-8")


def heartbeats(job: Job) -> int:
    """Heartbeats the job's single attempt wrote: every write bumps ``version`` by one.

    Submit creates version 1 (recorded as dispatched: publishing writes nothing more when the
    broker takes the message); the claim and the success bump it once each. Everything else is a
    heartbeat.
    """
    return job.version - 1 - 1 - 1


@pytest.fixture
def tenant() -> Tenant:
    return Tenant.objects.create(name="acme")


@pytest.fixture
def other_tenant() -> Tenant:
    return Tenant.objects.create(name="globex")


@pytest.fixture
def member(django_user_model: Any, tenant: Tenant) -> Any:
    user = django_user_model.objects.create_user("alice", password="x")
    Membership.objects.create(user=user, tenant=tenant)
    return user


@pytest.fixture
def export(member: Any, tenant: Tenant) -> Iterator[Any]:
    """Submit an export as the tenant member; the files it wrote are removed afterwards."""
    submitted: list[Job] = []

    def run(**payload: Any) -> Job:
        job = submit("export.jobs", payload, owner=member, tenant=tenant)
        submitted.append(job)
        return job

    yield run
    for job in submitted:
        for fmt in ("csv", "json"):
            default_storage.delete(f"exports/{job.pk}.{fmt}")


def test_it_exports_only_the_submitters_tenant_as_csv(worker, export, tenant, other_tenant):
    # Given jobs of the submitter's tenant, of another tenant and of no tenant
    mine = make_jobs(2, tenant=tenant, status=Status.SUCCEEDED)
    mine += make_jobs(
        1, tenant=tenant, status=Status.FAILED, error_type="WebhookRejected", error_message='=HYPERLINK("x")'
    )
    make_jobs(2, tenant=other_tenant)
    make_jobs(1)

    # When a tenant member exports as CSV
    job = export(format="csv")
    done = wait_terminal(job.id)

    # Then the file has the header and exactly the tenant's rows (not the export itself)
    assert done.status == Status.SUCCEEDED, done.error_message
    content = read_export(done)
    rows = list(csv.reader(io.StringIO(content)))
    assert tuple(rows[0]) == COLUMNS
    records = [dict(zip(COLUMNS, row, strict=True)) for row in rows[1:]]
    assert {r["id"] for r in records} == ids(mine)
    # A cell a spreadsheet would run as a formula is neutralised
    assert [r["error_message"] for r in records if r["status"] == "failed"] == ['\'=HYPERLINK("x")']
    # And the result describes the file
    assert done.result == {
        "path": f"exports/{job.pk}.csv",
        "rows": 3,
        "format": "csv",
        "bytes": len(content.encode()),
    }
    assert default_storage.size(done.result["path"]) == done.result["bytes"]
    assert done.progress == 1.0
    assert done.progress_message == "3 jobs exported"
    assert heartbeats(done) == 2  # "exporting 3 jobs" and "3 jobs exported"


def test_it_exports_json_with_native_types(worker, export, tenant, other_tenant):
    started = timezone.now() - timedelta(minutes=5)
    mine = make_jobs(1, tenant=tenant, status=Status.SUCCEEDED, attempts=2, started_at=started)
    mine += make_jobs(1, tenant=tenant)
    make_jobs(3, tenant=other_tenant)

    job = export(format="json")
    done = wait_terminal(job.id)

    assert done.status == Status.SUCCEEDED, done.error_message
    records = json.loads(read_export(done))
    assert {r["id"] for r in records} == ids(mine)
    assert all(tuple(r) == COLUMNS for r in records)
    by_id = {r["id"]: r for r in records}
    ran, queued = by_id[str(mine[0].pk)], by_id[str(mine[1].pk)]
    assert ran["attempts"] == 2 and ran["status"] == "succeeded"
    assert ran["started_at"] == started.isoformat()
    assert queued["started_at"] is None and queued["attempts"] == 0
    assert done.result["rows"] == 2 and done.result["format"] == "json"
    assert done.result["path"] == f"exports/{job.pk}.json"
    assert done.progress == 1.0


def test_it_filters_by_status_type_and_creation_time(worker, export, tenant):
    now = timezone.now()
    wanted = make_jobs(2, tenant=tenant, type="webhook.deliver", status=Status.FAILED)
    make_jobs(1, tenant=tenant, type="webhook.deliver", status=Status.SUCCEEDED)
    make_jobs(1, tenant=tenant, type="diagnostics.sleep", status=Status.FAILED)
    make_jobs(1, tenant=tenant, type="webhook.deliver", status=Status.FAILED, created_at=now - timedelta(days=3))

    job = export(
        format="json",
        status=["failed"],
        type="webhook.deliver",
        created_after=(now - timedelta(days=1)).isoformat(),
    )
    done = wait_terminal(job.id)

    assert done.status == Status.SUCCEEDED, done.error_message
    assert {r["id"] for r in json.loads(read_export(done))} == ids(wanted)
    assert done.result["rows"] == 2


def test_a_rerun_of_the_same_job_overwrites_its_file(worker, export, tenant):
    # Given an export that completed and wrote its file
    first_batch = make_jobs(2, tenant=tenant)
    job = export(format="csv")
    first = wait_terminal(job.id)
    assert first.status == Status.SUCCEEDED, first.error_message
    path = first.result["path"]

    # When its message is delivered again (its worker died after writing the file, before the
    # success was recorded) and more jobs exist by then
    later = make_jobs(1, tenant=tenant)
    Job.objects.filter(pk=job.pk).update(status=Status.RUNNING)
    assert dispatch(Job.objects.get(pk=job.pk))
    second = wait_terminal(job.id)

    # Then the same file was rewritten with the current rows, and no second file appeared
    assert second.status == Status.SUCCEEDED, second.error_message
    assert second.attempts == 2 and second.lost_deliveries == 1
    assert second.result["path"] == path
    assert second.result["rows"] == 3
    rows = list(csv.reader(io.StringIO(read_export(second))))
    assert {row[0] for row in rows[1:]} == ids(first_batch + later)
    _dirs, files = default_storage.listdir("exports")
    assert [name for name in files if name.startswith(str(job.pk))] == [f"{job.pk}.csv"]


def test_a_large_export_heartbeats_its_progress_as_it_goes(worker, export, tenant):
    # Given more jobs than one heartbeat interval, three times over
    total = 3 * HEARTBEAT_EVERY
    make_jobs(total, tenant=tenant, status=Status.SUCCEEDED)

    # When they are exported
    job = export(format="csv")
    done = wait_terminal(job.id)

    # Then it heartbeat at the start, after every HEARTBEAT_EVERY rows, and at the end
    assert done.status == Status.SUCCEEDED, done.error_message
    assert done.result["rows"] == total
    assert heartbeats(done) == 1 + total // HEARTBEAT_EVERY + 1
    assert done.heartbeat_at is not None and done.heartbeat_at >= done.started_at
    assert done.progress == 1.0
    assert done.progress_message == f"{total} jobs exported"
    assert len(read_export(done).splitlines()) == total + 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"format": "xlsx"}, "payload.format"),
        ({"status": ["finished"]}, "payload.status"),
        ({"created_after": "2026-01-02T00:00:00Z", "created_before": "2026-01-01T00:00:00Z"}, "payload"),
    ],
)
def test_it_rejects_an_invalid_export_payload(payload, field):
    with pytest.raises(SubmissionError) as excinfo:
        validate_payload("export.jobs", payload)
    assert any(key == field or key.startswith(f"{field}.") for key in excinfo.value.errors), excinfo.value.errors


@pytest.mark.django_db(transaction=True)
def test_an_export_file_is_owner_only_in_an_owner_only_folder_whatever_the_umask(worker, export, tenant):
    # Given the exports folder left world-readable by an earlier version, and a permissive umask
    folder = Path(default_storage.path("exports"))
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    # When a tenant member exports
    done = wait_terminal(export(format="json").id)
    # Then the file is 0600 and its folder 0700: nobody else on the host can read a tenant's jobs
    assert done.status == Status.SUCCEEDED, done.error_message
    path = Path(default_storage.path(done.result["path"]))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
