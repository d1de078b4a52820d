"""The operational endpoints: liveness, readiness and Prometheus metrics, at the site's root."""

from django.urls import path

from results.ops.health import healthz, readyz
from results.ops.metrics import metrics

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),  # 503 + JSON naming what failed (tasks.fleet.readiness)
    path("metrics", metrics, name="metrics"),  # Prometheus; bearer token if TERMINUS_METRICS_TOKEN
]
