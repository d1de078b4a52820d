from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from project.health import healthz, readyz
from project.metrics import metrics

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),  # 503 + JSON naming what failed (tasks.health)
    path("metrics", metrics, name="metrics"),  # Prometheus; bearer token if TERMINUS_METRICS_TOKEN
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/", include("results.api.urls")),
    path("", include("results.web.urls")),  # /jobs/ and /accounts/login/
]
