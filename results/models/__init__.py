"""The records: the one place every path writes to, and the state machine that guards it.

One module per kind of record (jobs and their attempts, dead letters, alerts, cron runs, what the
system records about itself, tenants); Django finds the models here, and the rest of the code
imports them from ``results.models``. The records know neither Celery nor HTTP: every state change
is a guarded ``UPDATE`` (``Job._move`` with ``ALLOWED_SOURCES``, in results/models/jobs.py).
"""

from results.models.alerts import Alert, AlertStatus, AlertWindow
from results.models.crons import CronRun, CronRunStatus
from results.models.dead_letters import DeadLetter, DeadLetterReason, DeadLetterStatus
from results.models.jobs import (
    ALLOWED_SOURCES,
    LOST_MESSAGE,
    TERMINAL_STATUSES,
    AttemptOutcome,
    Claim,
    HookState,
    Job,
    JobAttempt,
    Status,
)
from results.models.keys import RetiredKey
from results.models.monitoring import HealthState, MetricsRollup, QueueCanary
from results.models.tenants import Membership, Tenant
from results.models.workers import REPAIR_PASS, RepairLease, WorkerNode

__all__ = [
    "ALLOWED_SOURCES",
    "LOST_MESSAGE",
    "REPAIR_PASS",
    "TERMINAL_STATUSES",
    "Alert",
    "AlertStatus",
    "AlertWindow",
    "AttemptOutcome",
    "Claim",
    "CronRun",
    "CronRunStatus",
    "DeadLetter",
    "DeadLetterReason",
    "DeadLetterStatus",
    "HealthState",
    "HookState",
    "Job",
    "JobAttempt",
    "Membership",
    "MetricsRollup",
    "QueueCanary",
    "RepairLease",
    "RetiredKey",
    "Status",
    "Tenant",
    "WorkerNode",
]
