"""Logging: one JSON object per line in production, readable lines in development (``LOG_FORMAT``).

Django's, Celery's and our own stdlib loggers and structlog loggers all end in the same handler and
the same structlog ``ProcessorFormatter``, so every line has one shape. Context bound with
``structlog.contextvars`` is merged into every line emitted while it is bound:

* a web request: ``correlation_id`` (project.middleware binds it for the whole request);
* a task run by a worker: ``job_id``, ``job_type``, ``attempt``, ``correlation_id`` and ``worker``,
  bound when the task starts (Celery's ``task_prerun``; tracked jobs add their claimed attempt and
  the record's correlation id) and cleared when it ends (``task_postrun``), so Celery's own
  "Task … succeeded" line of that task carries them too.

Lines the worker's main process writes about a message (Celery's "Task … received") carry the
``job_id`` and ``job_type`` Celery passes as the line's arguments.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import structlog
from celery.signals import task_postrun, task_prerun
from django.core.exceptions import ImproperlyConfigured

LOG_FORMATS = ("json", "console")
#: The fields a job's lines carry, bound per task and cleared after it.
JOB_FIELDS = ("job_id", "job_type", "attempt", "correlation_id", "worker")
#: ``extra=`` keys copied into a line's fields. Others are not: Celery's "received" line passes
#: the message's args and kwargs (a job's payload) as ``extra``, and payloads stay out of logs.
EXTRA_FIELDS = (
    *JOB_FIELDS,
    "attempts",
    "reason",
    "error_type",
    "dead_letter_id",
    "queue",
    "http_method",
    "path",
    "status",
    "duration_ms",
    "remote_addr",
)
#: The Celery-native task that records a dead letter: its lines carry the failed job's id and
#: correlation id, taken from the dead-letter message (wire protocol: tasks/failure/dead_letters.py).
DEAD_LETTER_RECORD_TASK = "terminus.dead_letter.record"


#: Terminus's own periodic tasks (the crons, the queue canaries, the alert flush): Celery's lines about
#: them (beat's "Sending due task", the worker's "received" and "succeeded") repeat every minute and say
#: nothing a CronRun row does not, so they are logged at DEBUG; a failure of one stays at its level.
BOOKKEEPING_TASKS = re.compile(r"^terminus\.(cron\.|health\.canary$|alerts\.flush$)")
#: The Celery loggers that write those lines.
BOOKKEEPING_LOGGERS = ("celery.beat", "celery.worker.strategy", "celery.app.trace")


def _task_name_of(record: logging.LogRecord) -> str:
    """The task a Celery line is about: ``{"name": …}`` (worker) or ``(entry, task)`` (beat)."""
    args = record.args
    if isinstance(args, dict):
        return str(args.get("name", ""))
    if isinstance(args, tuple) and len(args) == 2:  # beat: "Sending due task %s (%s)"
        return str(args[1])
    return ""


class BookkeepingAtDebug(logging.Filter):
    """Celery's INFO lines about a bookkeeping task become DEBUG lines, shown only at LOG_LEVEL=DEBUG.

    A filter on the logger, because Celery's level is per logger and the same logger writes the
    lines of the jobs users submit, which stay at INFO.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not BOOKKEEPING_TASKS.match(_task_name_of(record)):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _celery_message_fields(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Celery logs a task's lines with ``{"id": …, "name": …}`` as arguments: keep them as fields."""
    args = event_dict.pop("positional_args", None)  # the formatter passes them (pass_foreign_args)
    if isinstance(args, dict) and "id" in args and "name" in args:
        event_dict.setdefault("job_id", str(args["id"]))
        event_dict.setdefault("job_type", str(args["name"]))
    return event_dict


#: A URL's userinfo (``user:password@``) and query string (``?token=…``): where credentials ride.
_URL_SECRETS = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?:[^\s/@]*@)?(?P<rest>[^\s?#\"']*)(?:\?[^\s#\"']*)?"
)


def without_url_secrets(text: str) -> str:
    """``text`` with every URL's userinfo and query string removed (``https://host/path?…``)."""
    return _URL_SECRETS.sub(lambda m: m["scheme"] + m["rest"] + ("?…" if "?" in m[0] else ""), text)


def _redact_urls(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """No log line carries a URL's password or query string (a webhook's token rides there)."""
    for key, value in event_dict.items():
        if isinstance(value, str) and "://" in value:
            event_dict[key] = without_url_secrets(value)
    return event_dict


def _leading_fields(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """timestamp, level, logger and message first: the order a person reads a line in."""
    lead = {key: event_dict.pop(key) for key in ("timestamp", "level", "logger", "message") if key in event_dict}
    return {**lead, **event_dict}


def _pre_chain() -> list[Any]:
    """Processors every line goes through, stdlib or structlog, before it is rendered."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(allow=EXTRA_FIELDS),
        _celery_message_fields,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]


def configure_structlog() -> None:
    """Send structlog loggers through the stdlib handlers (idempotent; every process calls it)."""
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def formatter(fmt: str = "json") -> structlog.stdlib.ProcessorFormatter:
    """The handler formatter for ``fmt``; LOGGING names it with ``"()"``, so dictConfig builds it."""
    if fmt not in LOG_FORMATS:
        raise ImproperlyConfigured(f"LOG_FORMAT={fmt!r} is not one of {', '.join(LOG_FORMATS)}")
    configure_structlog()
    if fmt == "json":
        render = [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redact_urls,
            structlog.processors.EventRenamer("message"),
            _leading_fields,
            structlog.processors.JSONRenderer(sort_keys=False),
        ]
    else:
        render = [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _redact_urls,
            # Plain tracebacks: rich's would print every frame's local variables (payloads).
            structlog.dev.ConsoleRenderer(
                colors=False, sort_keys=False, exception_formatter=structlog.dev.plain_traceback
            ),
        ]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_pre_chain(), processors=render, pass_foreign_args=True
    )


def logging_config(*, level: str, fmt: str) -> dict[str, Any]:
    """Django's LOGGING: one stream handler on the root logger, rendered as ``fmt``."""
    if fmt not in LOG_FORMATS:
        raise ImproperlyConfigured(f"LOG_FORMAT={fmt!r} is not one of {', '.join(LOG_FORMATS)}")
    if level.upper() not in logging.getLevelNamesMapping():
        raise ImproperlyConfigured(f"LOG_LEVEL={level!r} is not a log level (DEBUG, INFO, WARNING, ERROR)")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"terminus": {"()": "project.logging.formatter", "fmt": fmt}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "terminus"}},
        "root": {"handlers": ["console"], "level": level.upper()},
        # Django logs every 4xx/5xx through django.request and the server: keep one line each.
        # celery.pool logs every task's headers and body at DEBUG: payloads must not reach logs.
        "filters": {"bookkeeping": {"()": "project.logging.BookkeepingAtDebug"}},
        "loggers": {
            "django.server": {"level": "WARNING"},
            "celery.pool": {"level": "INFO"},
            **{name: {"filters": ["bookkeeping"]} for name in BOOKKEEPING_LOGGERS},
        },
    }


# -- per task context ------------------------------------------------------------------------------
def bind_job(**fields: Any) -> None:
    """Add fields to the running task's log context (tracked jobs: attempt, correlation id)."""
    structlog.contextvars.bind_contextvars(**fields)


@task_prerun.connect
def _bind_task(task_id: str | None = None, task: Any = None, kwargs: dict | None = None, **_: Any) -> None:
    """Every line of a task carries its id, type, attempt, correlation id and worker."""
    structlog.contextvars.clear_contextvars()
    request = getattr(task, "request", None)
    fields: dict[str, Any] = {
        "job_id": str(task_id),
        "job_type": getattr(task, "name", ""),
        "attempt": int(getattr(request, "retries", 0) or 0) + 1,
        "correlation_id": "",
        "worker": getattr(request, "hostname", "") or "",
    }
    if fields["job_type"] == DEAD_LETTER_RECORD_TASK and kwargs:
        headers = kwargs.get("headers") if isinstance(kwargs.get("headers"), dict) else {}
        fields["correlation_id"] = str(headers.get("correlation_id") or "")
        fields["failed_job_id"] = str(kwargs.get("job_id") or kwargs.get("message_key") or "")
    structlog.contextvars.bind_contextvars(**fields)


@task_postrun.connect
def _clear_task(**_: Any) -> None:
    """A pool process runs many tasks: nothing of one may leak into the next one's lines."""
    structlog.contextvars.clear_contextvars()


# -- gunicorn ----------------------------------------------------------------------------------------
def _gunicorn_logger_class() -> type:
    from gunicorn.glogging import Logger

    class GunicornLogger(Logger):
        """gunicorn's error and access logs in the same shape as the rest (deploy/start-web.sh).

        With LOG_FORMAT=json each access line is a JSON object with the request's method, path,
        status, duration and the X-Correlation-ID the response carried; the classic access line
        stays in ``message``.
        """

        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
            from django.conf import settings

            if settings.LOG_FORMAT == "json":
                json_formatter = formatter("json")
                for log in (self.error_log, self.access_log):
                    for handler in log.handlers:
                        handler.setFormatter(json_formatter)

        def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
            if not (self.cfg.accesslog or self.cfg.logconfig or self.cfg.logconfig_dict or self.cfg.syslog):
                return
            atoms = self.atoms(resp, req, environ, request_time)
            headers = {name.lower(): value for name, value in (getattr(resp, "headers", None) or [])}
            extra = {
                "http_method": atoms.get("m"),
                "path": atoms.get("U"),
                "status": resp.status_code if hasattr(resp, "status_code") else atoms.get("s"),
                "duration_ms": round(request_time.total_seconds() * 1000, 1),
                "correlation_id": headers.get("x-correlation-id", ""),
                "remote_addr": atoms.get("h"),
            }
            self.access_log.info(self.cfg.access_log_format, atoms, extra=extra)

    return GunicornLogger


def __getattr__(name: str) -> Any:
    # gunicorn imports --logger-class by dotted path; build the class only then (web processes).
    if name == "GunicornLogger":
        return _gunicorn_logger_class()
    raise AttributeError(name)
