"""``POST /api/jobs/bulk/``: many jobs in one request, for producers that submit in batches.

All or nothing: one bad item refuses the whole batch with 400, its errors keyed by index
(``jobs.3.payload.seconds``); a payload over its size limit, with 413. The jobs are recorded in
one transaction and published on commit over one broker connection; each is then polled at
``/api/jobs/{id}/`` like any other.

Every job of the batch spends one submission of the user's submit rate: a batch that would go
over it is refused whole with 429 and ``Retry-After`` (400 when the batch is larger than the
whole rate, which no wait would allow).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tasks.submit.outbox import submit_many

from . import examples
from .parsers import LimitedJSONParser
from .responses import error_responses
from .throttling import SubmitRateThrottle
from .views import body_object, correlation_id_from, tenant_of


class BulkItemSerializer(serializers.Serializer):
    type = serializers.CharField(help_text="A registered job type.")
    payload = serializers.JSONField(help_text="The job's input object.")
    queue = serializers.CharField(required=False, allow_null=True)
    countdown = serializers.IntegerField(required=False, allow_null=True)
    scheduled_for = serializers.DateTimeField(required=False, allow_null=True)


class BulkSubmitSerializer(serializers.Serializer):
    jobs = BulkItemSerializer(many=True, help_text=f"1 to {settings.TERMINUS_MAX_BULK} jobs.")


class BulkJobSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    type = serializers.CharField()
    status = serializers.CharField()
    url = serializers.CharField()


class BulkResultSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    correlation_id = serializers.CharField()
    jobs = BulkJobSerializer(many=True)


class BulkSubmitView(APIView):
    parser_classes = [LimitedJSONParser]
    throttle_classes = [SubmitRateThrottle]
    throttle_scope = "submit"
    throttle_cost_field = "jobs"

    def throttle_cost(self, request: Request) -> int:
        """Each job of the batch is one submission of the user's budget (a malformed batch: one)."""
        data = request.data
        jobs = data.get("jobs") if isinstance(data, dict) else None
        if isinstance(jobs, list) and 1 <= len(jobs) <= settings.TERMINUS_MAX_BULK:
            return len(jobs)
        return 1

    @extend_schema(
        operation_id="jobs_bulk_create",
        summary="Submit many jobs",
        description=(
            "Records every job in one transaction and publishes them on commit. All or nothing: a bad "
            "item refuses the batch, with errors keyed `jobs.<index>.<field>`. Items take `type`, "
            "`payload`, `queue` and `countdown` or `scheduled_for` (no idempotency key: retry the batch as a whole). "
            "Each job spends one submission of the submit rate: a batch that would go over it is "
            "refused whole with 429 and `Retry-After`."
        ),
        request=BulkSubmitSerializer,
        responses={202: BulkResultSerializer, **error_responses(400, 401, 413, 415, 429)},
        examples=examples.BULK,
    )
    def post(self, request: Request) -> Response:
        body = body_object(request)
        unknown = sorted(set(body) - {"jobs"})
        if unknown:
            raise ValidationError({name: ["unknown field; allowed: jobs"] for name in unknown})
        correlation_id = correlation_id_from(request)
        jobs = submit_many(
            body.get("jobs"),
            owner=request.user,
            tenant=tenant_of(request.user),
            correlation_id=correlation_id,
            by=request.user,
        )
        # One reverse() for the batch: the detail URL differs only by the id.
        url = reverse("api-job-detail", kwargs={"pk": str(jobs[0].pk)}).replace(str(jobs[0].pk), "{}")
        result: dict[str, Any] = {
            "count": len(jobs),
            "correlation_id": jobs[0].correlation_id,
            "jobs": [
                {"id": str(job.pk), "type": job.type, "status": job.status, "url": url.format(job.pk)} for job in jobs
            ],
        }
        return Response(result, status=status.HTTP_202_ACCEPTED, headers={"X-Correlation-ID": result["correlation_id"]})
