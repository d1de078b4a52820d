from importlib import import_module

from django.apps import AppConfig
from django.conf import settings


class TasksConfig(AppConfig):
    name = "tasks"
    verbose_name = "Terminus runtime"

    def ready(self) -> None:
        # Importing a job module registers its job types (and their Celery tasks); the runtime's
        # own Celery-native tasks (dead letters, alerts) register the same way.
        for module in ("tasks.dead_letter", "tasks.alerting", *settings.TERMINUS_JOB_MODULES):
            import_module(module)
