from django.apps import AppConfig


class ResultsConfig(AppConfig):
    name = "results"
    verbose_name = "Terminus jobs"
    default_auto_field = "django.db.models.BigAutoField"
