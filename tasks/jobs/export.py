"""export.jobs: write job records to CSV or JSON in storage, as a long job that reports progress."""

from __future__ import annotations

import contextlib
import csv
import json
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from django.core.files import File
from django.core.files.storage import default_storage
from pydantic import BaseModel, Field, field_validator, model_validator

from results.models import Job, Status
from tasks.runtime.base import TrackedTask
from tasks.runtime.registry import job

#: Columns of an export, in order; payloads and results are left out (they may hold user data).
COLUMNS = (
    "id",
    "type",
    "queue",
    "status",
    "attempts",
    "max_retries",
    "error_type",
    "error_message",
    "worker",
    "correlation_id",
    "created_at",
    "started_at",
    "finished_at",
)
HEARTBEAT_EVERY = 500
#: A CSV cell starting with one of these is a formula to spreadsheet apps (CSV injection); error
#: messages and correlation ids come from outside, so such cells get a leading apostrophe.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class ExportInput(BaseModel):
    format: Literal["csv", "json"] = "csv"
    status: list[Status] = Field(default_factory=list, description="Only jobs in these statuses (default: all).")
    type: str | None = Field(None, max_length=100, description="Only jobs of this type.")
    created_after: datetime | None = None
    created_before: datetime | None = None

    @field_validator("created_after", "created_before")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        # A bound without an offset means UTC (settings.TIME_ZONE), not the worker's local time.
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value

    @model_validator(mode="after")
    def _range(self) -> ExportInput:
        if self.created_after and self.created_before and self.created_after >= self.created_before:
            raise ValueError("created_after must be before created_before")
        return self


def _rows(data: ExportInput, me: Job) -> Any:
    """The jobs this export may see: the submitter's tenant (or owner), never the export itself."""
    jobs = Job.objects.exclude(pk=me.pk)
    if me.tenant_id is not None:
        jobs = jobs.filter(tenant_id=me.tenant_id)
    elif me.owner_id is not None and not me.owner.is_staff:
        jobs = jobs.filter(owner_id=me.owner_id, tenant__isnull=True)
    if data.status:
        jobs = jobs.filter(status__in=data.status)
    if data.type:
        jobs = jobs.filter(type=data.type)
    if data.created_after:
        jobs = jobs.filter(created_at__gte=data.created_after)
    if data.created_before:
        jobs = jobs.filter(created_at__lt=data.created_before)
    return jobs.order_by("created_at", "id")


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    text = str(value)
    return f"'{text}" if isinstance(value, str) and text.startswith(FORMULA_PREFIXES) else text


def _json_value(value: Any) -> Any:
    """JSON keeps its types: numbers stay numbers and a missing timestamp is null, not ""."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


@job("export.jobs", input=ExportInput, queue="slow", time_limit=1800, soft_time_limit=1780)
def export_jobs(task: TrackedTask, data: ExportInput) -> dict[str, Any]:
    """Export matching jobs to exports/<job id>.<format>; a re-run overwrites the same file."""
    me = Job.objects.select_related("owner").get(pk=task.job_id)
    rows = _rows(data, me)
    total = rows.count()
    task.heartbeat(progress=0.0, message=f"exporting {total} jobs")
    name = f"exports/{task.job_id}.{data.format}"
    written = 0
    with tempfile.NamedTemporaryFile("w+", suffix=f".{data.format}", newline="", encoding="utf-8") as out:
        writer = csv.writer(out) if data.format == "csv" else None
        if writer:
            writer.writerow(COLUMNS)
        else:
            out.write("[")
        for values in rows.values_list(*COLUMNS).iterator(chunk_size=2000):
            if writer:
                writer.writerow([_csv_cell(v) for v in values])
            else:
                record = dict(zip(COLUMNS, map(_json_value, values), strict=True))
                out.write(("," if written else "") + "\n" + json.dumps(record, ensure_ascii=False))
            written += 1
            if written % HEARTBEAT_EVERY == 0:
                task.heartbeat(progress=written / max(total, 1), message=f"{written} of {total} jobs")
        if not writer:
            out.write("\n]\n")
        out.flush()
        size = Path(out.name).stat().st_size
        out.seek(0)
        if default_storage.exists(name):
            default_storage.delete(name)
        saved = default_storage.save(name, File(out, name=Path(name).name))
    _owner_only_folder(saved)
    task.heartbeat(progress=1.0, message=f"{written} jobs exported")
    return {"path": saved, "rows": written, "format": data.format, "bytes": size}


def _owner_only_folder(saved: str) -> None:
    """The folder of a saved export is the owner's only, even if it was created before with a wider mode.

    The file itself is written 0600 (FILE_UPLOAD_PERMISSIONS); storages that are not on this
    filesystem (object stores) have no folder modes, and keep their own access control.
    """
    with contextlib.suppress(NotImplementedError):
        Path(default_storage.path(saved)).parent.chmod(0o700)
