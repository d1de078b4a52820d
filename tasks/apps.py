from importlib import import_module

from django.apps import AppConfig
from django.conf import settings

#: Imported in every process (web, worker, beat) once Django is ready: the Celery-native tasks
#: (dead letters, alerts, canaries), the worker's signal handlers (event metrics) and remote-control
#: commands, worker liveness. Job types (TERMINUS_JOB_MODULES) and crons (tasks.crons.beat.load) follow.
ENGINE_MODULES = (
    "tasks.failure.dead_letters",
    "tasks.failure.alerting",
    "tasks.runtime.outbound",  # installs the outbound policy's check for alert webhooks (apprise_urls)
    "tasks.fleet.canaries",
    "tasks.submit.outbox",  # installs submit() behind a job type's task.delay() (tasks.runtime.direct_calls)
    "tasks.fleet.control",
    "tasks.fleet.events",
    "tasks.fleet.broker_window",
    "tasks.recovery.liveness",
)


class TasksConfig(AppConfig):
    name = "tasks"
    verbose_name = "Terminus runtime"

    def ready(self) -> None:
        # Importing a module registers what it declares (Celery tasks, job types, crons, signal
        # handlers), so web, worker and beat all see the same registries. Django's rule: app code
        # is imported here, not when the app config is.
        for module in (*ENGINE_MODULES, *settings.TERMINUS_JOB_MODULES):
            import_module(module)
        import_module("tasks.crons.beat").load()
