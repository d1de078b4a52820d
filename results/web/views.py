"""The job watch page: a server-rendered shell; terminus.js and jobs.js talk to the API from the browser.

The page shows no job data itself. Everything it displays comes from the same API any client
uses (session authentication, tenant-scoped), so the page is also the reference client.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.mixins import LoginRequiredMixin
from django.http import Http404, HttpRequest, HttpResponse
from django.utils.decorators import method_decorator
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.generic import TemplateView

from results.models import Job
from tasks.runtime.types import job_types_for

#: The value an example payload shows for a required field without a default, by JSON type.
EMPTY_BY_JSON_TYPE: dict[str, Any] = {
    "string": "",
    "integer": 0,
    "number": 0,
    "boolean": False,
    "object": {},
    "array": [],
}


def example_payload(schema: dict[str, Any]) -> dict[str, Any]:
    """A payload to start from: every field with its default, required ones without one left empty."""
    required = set(schema.get("required", []))
    example: dict[str, Any] = {}
    for name, field in schema.get("properties", {}).items():
        if "default" in field:
            example[name] = field["default"]
        elif name in required:
            example[name] = EMPTY_BY_JSON_TYPE.get(field.get("type", ""))
    return example


@method_decorator(ensure_csrf_cookie, name="dispatch")
class JobsPageView(LoginRequiredMixin, TemplateView):
    """``/jobs/``: submit, list and watch; ``/jobs/<id>/`` opens one job (404 if not visible)."""

    template_name = "terminus/jobs.html"

    def get(self, request: HttpRequest, *args: Any, job_id: uuid.UUID | None = None, **kwargs: Any) -> HttpResponse:
        if job_id is not None and not Job.objects.visible_to(request.user).filter(pk=job_id).exists():
            raise Http404("No such job.")
        return super().get(request, *args, job_id=job_id, **kwargs)

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        job_id = context.pop("job_id", None)
        context["job_id"] = str(job_id) if job_id else ""
        context["job_types"] = [
            {
                "name": job_type.name,
                "description": job_type.description.replace("``", ""),  # docstring RST -> text
                "max_retries": job_type.retry.max_retries,
                "example": example_payload(job_type.input.model_json_schema()),
            }
            for job_type in job_types_for(self.request.user).values()
        ]
        return context
