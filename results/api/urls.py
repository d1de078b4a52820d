"""Routes under /api/ (project/urls.py mounts them; /api/schema/ is served there)."""

from django.urls import path, re_path

from .bulk import BulkSubmitView
from .dead_letters import DeadLetterViewSet
from .views import JobTypeListView, JobViewSet, NotFoundView

# Ids are matched as any segment and checked in the view, so a malformed id is the API's own
# JSON 404 rather than Django's HTML one.
urlpatterns = [
    path("jobs/", JobViewSet.as_view({"get": "list", "post": "create"}), name="api-job-list"),
    path("jobs/bulk/", BulkSubmitView.as_view(), name="api-job-bulk"),
    path("jobs/<str:pk>/", JobViewSet.as_view({"get": "retrieve"}), name="api-job-detail"),
    path("jobs/<str:pk>/cancel/", JobViewSet.as_view({"post": "cancel"}), name="api-job-cancel"),
    path("jobs/<str:pk>/retry/", JobViewSet.as_view({"post": "retry"}), name="api-job-retry"),
    path("job-types/", JobTypeListView.as_view(), name="api-job-types"),
    path("dead-letters/", DeadLetterViewSet.as_view({"get": "list"}), name="api-dead-letter-list"),
    path("dead-letters/stats/", DeadLetterViewSet.as_view({"get": "stats"}), name="api-dead-letter-stats"),
    path("dead-letters/<str:pk>/", DeadLetterViewSet.as_view({"get": "retrieve"}), name="api-dead-letter-detail"),
    path("dead-letters/<str:pk>/replay/", DeadLetterViewSet.as_view({"post": "replay"}), name="api-dead-letter-replay"),
    path(
        "dead-letters/<str:pk>/resolve/", DeadLetterViewSet.as_view({"post": "resolve"}), name="api-dead-letter-resolve"
    ),
    re_path(r"^.*$", NotFoundView.as_view(), name="api-not-found"),
]
