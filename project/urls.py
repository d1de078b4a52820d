from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from results.api.docs import RedocView, SwaggerView

urlpatterns = [
    path("", include("results.ops.urls")),  # /healthz, /readyz, /metrics
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SwaggerView.as_view(), name="api-docs"),
    path("api/redoc/", RedocView.as_view(), name="api-redoc"),
    path("api/", include("results.api.urls")),
    path("", include("results.web.urls")),  # /jobs/ and /accounts/login/
]
