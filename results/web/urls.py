"""Browser routes: the job watch page and sign-in/out (project/urls.py mounts them at the root)."""

from django.contrib.auth.views import LoginView, LogoutView
from django.urls import path

from .views import JobsPageView

urlpatterns = [
    path("jobs/", JobsPageView.as_view(), name="web-jobs"),
    path("jobs/<uuid:job_id>/", JobsPageView.as_view(), name="web-job"),
    path(
        "accounts/login/",
        LoginView.as_view(template_name="terminus/login.html", redirect_authenticated_user=True, next_page="web-jobs"),
        name="login",
    ),
    path("accounts/logout/", LogoutView.as_view(next_page="login"), name="logout"),
]
