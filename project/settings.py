"""Terminus settings: every knob is read from the environment here, and only here.

Development defaults are embedded (SQLite and kombu's filesystem broker under ``var/``) so a
fresh clone runs with no server; ``TERMINUS_ENV=production`` refuses to start without a real
secret, database and broker.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import csp.constants as csp
import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from project.schedules import parse_schedule

BASE_DIR = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# Environment helpers: strict, so a typo in a deploy file fails at start, not at 3 a.m.
# ---------------------------------------------------------------------------------------------
def env_str(name: str, default: str | None = None) -> str | None:
    """A string variable; ``NAME_FILE`` (a mounted secret) wins over ``NAME``."""
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        return Path(file_path).read_text().strip()
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def env_bool(name: str, default: bool) -> bool:
    value = env_str(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use true/false)")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = env_str(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} must be >= {minimum}")
    return number


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    value = env_str(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a number") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} must be >= {minimum}")
    return number


def env_schedule(name: str, default: int) -> int | str:
    """A cron's timing: seconds (``3600``) or a 5-field crontab (``0 3 * * *``), read by the one parser
    that ``@cron`` uses too (project/schedules.py); held as plain data, the seconds or the expression."""
    value = env_str(name)
    return parse_schedule(default if value is None else value, name=name).setting_value


def env_list(name: str, default: list[str]) -> list[str]:
    value = env_str(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def url_list(value: str | None) -> list[str]:
    """URLs separated by commas or spaces; a comma inside a URL (``?to=a@x,b@y``) stays in it."""
    parts = re.split(r"[\s,]+(?=[A-Za-z][A-Za-z0-9+.-]*://)", (value or "").strip())
    return [part.strip(" ,\t\n") for part in parts if part.strip(" ,\t\n")]


# ---------------------------------------------------------------------------------------------
# Core
# ---------------------------------------------------------------------------------------------
TERMINUS_ENV = env_str("TERMINUS_ENV", "development")
if TERMINUS_ENV not in {"development", "production"}:
    raise ImproperlyConfigured("TERMINUS_ENV must be 'development' or 'production'")
PRODUCTION = TERMINUS_ENV == "production"

# A checkout keeps its state next to manage.py; an installed wheel has no checkout, and its
# package folder (site-packages) is no place to write: ./var under the working directory instead.
_DEFAULT_VAR_DIR = BASE_DIR / "var" if (BASE_DIR / "manage.py").is_file() else Path.cwd() / "var"
VAR_DIR = Path(env_str("TERMINUS_VAR_DIR", str(_DEFAULT_VAR_DIR)))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", not PRODUCTION)
SECRET_KEY = env_str("SECRET_KEY")
if SECRET_KEY is None:
    if PRODUCTION:
        raise ImproperlyConfigured("SECRET_KEY is required when TERMINUS_ENV=production")
    # Development only: a fixed, obviously-insecure key so sessions survive restarts.
    SECRET_KEY = "dev-insecure-terminus-key-do-not-use-in-production-0123456789abcdef"  # noqa: S105
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and Redoc as static files: /api/docs/ needs no CDN
    "django_celery_results",
    "axes",
    "results",
    "tasks",
]

MIDDLEWARE = [
    "project.middleware.CorrelationIdMiddleware",  # first: every response and log line carries the id
    "results.ops.http_metrics.BeforeMiddleware",  # /metrics: requests, latency with every middleware
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "results.ops.http_metrics.AfterMiddleware",  # /metrics: latency and status by view (axes' 429s too)
    "axes.middleware.AxesMiddleware",  # last: answers 429 once a login is locked out
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
# Export files and other job output. Production points this at shared storage (a volume or
# django-storages) so that web and every worker see the same files.
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(VAR_DIR / "media")))
MEDIA_URL = "media/"
# Job output (exports of a tenant's jobs) is private: owner-only files in owner-only folders,
# whatever the process umask (FileSystemStorage applies both when it writes).
FILE_UPLOAD_PERMISSIONS = 0o600
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o700

# ---------------------------------------------------------------------------------------------
# Sign-in and the browser (login lockout, Content-Security-Policy)
# ---------------------------------------------------------------------------------------------
# Wrong passwords for one user from one address lock further tries (/accounts/login/ and
# /admin/login/ alike, counted in the database so every web process shares them) with a 429.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("TERMINUS_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("TERMINUS_LOGIN_LOCKOUT_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False  # no banner line on every process start
# Scripts only from this site (no inline script runs, whatever a page echoes); inline style
# attributes stay allowed for the admin's status colours.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [csp.SELF],
        "script-src": [csp.SELF],
        "style-src": [csp.SELF],
        "style-src-attr": [csp.UNSAFE_INLINE],
        "img-src": [csp.SELF, "data:"],
        "font-src": [csp.SELF],
        "connect-src": [csp.SELF],
        "object-src": [csp.NONE],
        "base-uri": [csp.SELF],
        "form-action": [csp.SELF],
        "frame-ancestors": [csp.NONE],
    }
}

# ---------------------------------------------------------------------------------------------
# Database
# ---------------------------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL is None and PRODUCTION:
    raise ImproperlyConfigured("DATABASE_URL is required when TERMINUS_ENV=production")
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL or f"sqlite:///{VAR_DIR / 'terminus.sqlite3'}",
        conn_max_age=env_int("DB_CONN_MAX_AGE", 60, minimum=0),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and beat share one file: wait for the write lock instead of failing, and
    # take it up front (IMMEDIATE) so read-then-write transactions cannot deadlock.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
# The test database is a file (never :memory:) so that real worker processes can open it.
_test_db_name = env_str("DB_TEST_NAME")
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["TEST"] = {"NAME": _test_db_name or str(VAR_DIR / "test_terminus.sqlite3")}
elif _test_db_name:
    DATABASES["default"]["TEST"] = {"NAME": _test_db_name}

# ---------------------------------------------------------------------------------------------
# Cache: throttles, long-poll counts, /readyz and /metrics answers, shared by every process
# ---------------------------------------------------------------------------------------------
# Redis when CACHE_URL names one (fastest); else a table in the database (created by migration
# results 0006), so that every web process counts against one budget either way.
CACHE_URL = env_str("CACHE_URL")
if CACHE_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "terminus_cache"}}

# ---------------------------------------------------------------------------------------------
# Security (production)
# ---------------------------------------------------------------------------------------------
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    SECURE_CONTENT_TYPE_NOSNIFF = True
    # /healthz and /readyz are probed over plain HTTP inside the cluster.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]

# ---------------------------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "results.api.errors.exception_handler",
    "DEFAULT_THROTTLE_RATES": {"submit": env_str("TERMINUS_SUBMIT_RATE", "6000/min")},
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Terminus API",
    "DESCRIPTION": "Submit background jobs and poll them until they reach a terminal state.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # /api/docs/ and /api/redoc/ load their assets from STATIC_URL, not a CDN (no internet needed).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SWAGGER_UI_SETTINGS": {"persistAuthorization": True, "displayOperationId": True, "filter": True},
}
# Request bodies above this are refused with 413 before they reach a view.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("TERMINUS_MAX_REQUEST_BYTES", 1024 * 1024, minimum=1024)
# Longest long poll (GET /api/jobs/{id}/?wait=N), seconds; each held poll occupies a web thread.
# Keep it below your proxy's read timeout; 0 turns long polling off (wait is then ignored).
TERMINUS_LONG_POLL_MAX = env_int("TERMINUS_LONG_POLL_MAX", 60, minimum=0)
# Long polls one user may hold at once (each holds a web thread); one more is a 429.
TERMINUS_LONG_POLL_PER_USER = env_int("TERMINUS_LONG_POLL_PER_USER", 4, minimum=1)

# ---------------------------------------------------------------------------------------------
# Terminus (jobs)
# ---------------------------------------------------------------------------------------------
TERMINUS_QUEUES = env_list("TERMINUS_QUEUES", ["default", "slow"])
TERMINUS_MAX_PAYLOAD_BYTES = env_int("TERMINUS_MAX_PAYLOAD_BYTES", 256 * 1024, minimum=1)
# An idempotency key stays reserved this long after the cleanup deleted its job (results/models/keys.py):
# a resubmission with it is refused (409, naming the job), never run a second time.
TERMINUS_IDEMPOTENCY_KEY_DAYS = env_int("TERMINUS_IDEMPOTENCY_KEY_DAYS", 30, minimum=1)
TERMINUS_MAX_BULK = env_int("TERMINUS_MAX_BULK", 1000, minimum=1)  # jobs per POST /api/jobs/bulk/
# A job's result above this (as JSON) is stored as a marker with its size and a preview (results/storable.py).
TERMINUS_MAX_RESULT_BYTES = env_int("TERMINUS_MAX_RESULT_BYTES", 1024 * 1024, minimum=1024)
# A retry wait (and, for new jobs, a countdown) longer than this is held in the database, not in the
# broker: the repair pass publishes the message when it is due within this (s).
TERMINUS_BROKER_DELAY_MAX = env_int("TERMINUS_BROKER_DELAY_MAX", 60, minimum=1)
# How far ahead a submission may be scheduled (countdown or scheduled_for), days. A wait longer than
# TERMINUS_BROKER_DELAY_MAX is held in the database, not in the broker.
TERMINUS_MAX_SCHEDULE_DAYS = env_int("TERMINUS_MAX_SCHEDULE_DAYS", 30, minimum=0)
TERMINUS_DEFAULT_TIME_LIMIT = env_int("TERMINUS_DEFAULT_TIME_LIMIT", 300, minimum=1)
TERMINUS_DEFAULT_SOFT_TIME_LIMIT = env_int("TERMINUS_DEFAULT_SOFT_TIME_LIMIT", 270, minimum=1)
TERMINUS_MAX_TIME_LIMIT = env_int("TERMINUS_MAX_TIME_LIMIT", 3600, minimum=1)
TERMINUS_RETRY_BACKOFF_BASE = env_float("TERMINUS_RETRY_BACKOFF_BASE", 2.0, minimum=0.01)
TERMINUS_RETRY_BACKOFF_MAX = env_float("TERMINUS_RETRY_BACKOFF_MAX", 600.0, minimum=0.01)
TERMINUS_DEFAULT_MAX_RETRIES = env_int("TERMINUS_DEFAULT_MAX_RETRIES", 5, minimum=0)
# A message whose worker died this many times is failed as "worker_lost" instead of being run
# again: reject_on_worker_lost alone would redeliver an OOM-ing job forever.
TERMINUS_MAX_LOST_DELIVERIES = env_int("TERMINUS_MAX_LOST_DELIVERIES", 3, minimum=1)
# How long a job may wait in the queue before its deadline starts to run out.
TERMINUS_QUEUE_TIMEOUT = env_int("TERMINUS_QUEUE_TIMEOUT", 3600, minimum=1)
# How long a worker keeps retrying a record write through a database outage.
TERMINUS_DB_RETRY_SECONDS = env_int("TERMINUS_DB_RETRY_SECONDS", 60, minimum=0)
TERMINUS_JOB_MODULES = env_list(
    "TERMINUS_JOB_MODULES",
    ["tasks.jobs.diagnostics", "tasks.jobs.webhook", "tasks.jobs.export"],
)
# Who may submit the diagnostics job types (they can crash, fill and hold a worker): everyone, staff,
# superuser or nobody. Off in production unless set; code (drills, benchmarks) may always submit them.
TERMINUS_DIAGNOSTICS_AUDIENCE = env_str("TERMINUS_DIAGNOSTICS_AUDIENCE", "nobody" if PRODUCTION else "staff")
if TERMINUS_DIAGNOSTICS_AUDIENCE not in {"everyone", "staff", "superuser", "nobody"}:
    raise ImproperlyConfigured("TERMINUS_DIAGNOSTICS_AUDIENCE must be everyone, staff, superuser or nobody")
# diagnostics.fail's hard time limit (its soft limit is one second less); tests shorten it.
TERMINUS_DIAGNOSTICS_TIME_LIMIT = env_int("TERMINUS_DIAGNOSTICS_TIME_LIMIT", 60, minimum=2)
TERMINUS_WEBHOOK_TIMEOUT = env_float("TERMINUS_WEBHOOK_TIMEOUT", 10.0, minimum=0.1)
# Jobs that call a URL a user gave (webhook.deliver) reach public addresses only; list internal
# receivers here: networks (10.1.0.0/16) and host names, comma-separated (tasks/runtime/outbound.py).
TERMINUS_OUTBOUND_ALLOW = env_list("TERMINUS_OUTBOUND_ALLOW", [])

# Dead letters and alerts
TERMINUS_BASE_URL = env_str("TERMINUS_BASE_URL", "http://127.0.0.1:8000").rstrip("/")
TERMINUS_ALERT_WEBHOOK_URL = env_str("TERMINUS_ALERT_WEBHOOK_URL")  # Slack-compatible incoming webhook
TERMINUS_ALERT_MAIL = env_bool("TERMINUS_ALERT_MAIL", False)  # mail ADMINS on final failures
# Apprise URLs (json://, slack://, msteams://, pagerduty://, discord://, …): each one a channel of its
# own; read (and refused if malformed) by tasks/failure/apprise_urls.py. URLs carry secrets: _FILE works.
TERMINUS_ALERT_URLS = url_list(env_str("TERMINUS_ALERT_URLS"))
TERMINUS_ALERT_WINDOW = env_int("TERMINUS_ALERT_WINDOW", 600, minimum=1)  # one alert per type+error per window
TERMINUS_DEAD_LETTER_MAX_ROWS = env_int("TERMINUS_DEAD_LETTER_MAX_ROWS", 100_000, minimum=1)
TERMINUS_DEAD_LETTER_MAX_AGE_DAYS = env_int("TERMINUS_DEAD_LETTER_MAX_AGE_DAYS", 90, minimum=1)

# ---------------------------------------------------------------------------------------------
# Mail (alerts to ADMINS)
# ---------------------------------------------------------------------------------------------
ADMINS = [
    (address.split("<")[0].strip() or address, address.split("<")[-1].rstrip(">").strip())
    for address in env_list("ADMINS", [])
]
EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "django.core.mail.backends.smtp.EmailBackend" if PRODUCTION else "django.core.mail.backends.console.EmailBackend",
)
EMAIL_FILE_PATH = env_str("EMAIL_FILE_PATH", str(VAR_DIR / "mail"))
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = 10
SERVER_EMAIL = env_str("SERVER_EMAIL", "terminus@localhost")
DEFAULT_FROM_EMAIL = SERVER_EMAIL

# ---------------------------------------------------------------------------------------------
# Celery
# ---------------------------------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL")
if CELERY_BROKER_URL is None and PRODUCTION:
    raise ImproperlyConfigured("CELERY_BROKER_URL is required when TERMINUS_ENV=production")
BROKER_DIR = VAR_DIR / "broker"
if CELERY_BROKER_URL is None:
    # Development: kombu's filesystem transport needs no server; web, worker and beat on one
    # machine share the folders below. The host is ignored; naming it keeps kombu from warning that
    # none was supplied on every connection (a line every health tick and every submission).
    CELERY_BROKER_URL = "filesystem://localhost/"
    for _sub in ("queue", "processed", "control"):
        (BROKER_DIR / _sub).mkdir(parents=True, exist_ok=True)

CELERY_RESULT_BACKEND = "django-db"  # Celery-native tasks (crons, alerting, canvas) only.
CELERY_RESULT_EXTENDED = True
CELERY_CACHE_BACKEND = "django-cache"
CELERY_ACCEPT_CONTENT = ["json"]  # never pickle: a message is data, not code
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TRACK_STARTED = True
CELERY_TASK_TIME_LIMIT = TERMINUS_DEFAULT_TIME_LIMIT
CELERY_TASK_SOFT_TIME_LIMIT = TERMINUS_DEFAULT_SOFT_TIME_LIMIT
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Recycle children by default: leaks become restarts, not OOM kills mid-job.
CELERY_WORKER_MAX_TASKS_PER_CHILD = env_int("CELERY_WORKER_MAX_TASKS_PER_CHILD", 1000, minimum=1)
CELERY_WORKER_MAX_MEMORY_PER_CHILD = env_int("CELERY_WORKER_MAX_MEMORY_PER_CHILD", 512_000, minimum=1)  # KiB
# Publishing happens in the request: fail fast when the broker is down (the job stays queued
# with dispatched_at empty and is re-dispatched later) instead of hanging the client.
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": env_int("TERMINUS_PUBLISH_RETRIES", 2, minimum=0),
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
CELERY_BROKER_CONNECTION_TIMEOUT = 2
# The broker's redelivery window. Redis: a message delivered but not acked comes back after
# visibility_timeout; RabbitMQ: a consumer holding a message longer than the work queues'
# x-consumer-timeout loses its channel and the message is delivered again. It must exceed
# the longest hard time limit plus the longest wait a message spends in the broker (a countdown or
# retry delay up to TERMINUS_BROKER_DELAY_MAX; longer ones are held in the database), or a slow job
# is run twice while still alive (celery#4400). kombu then restores it in a sweep every
# interval x throttle seconds (default 10 x 10 = ~100 s); we sweep every 10 s.
CELERY_VISIBILITY_TIMEOUT = env_int(
    "CELERY_VISIBILITY_TIMEOUT", TERMINUS_MAX_TIME_LIMIT + TERMINUS_BROKER_DELAY_MAX + 300, minimum=1
)
if CELERY_VISIBILITY_TIMEOUT <= TERMINUS_MAX_TIME_LIMIT + TERMINUS_BROKER_DELAY_MAX:
    raise ImproperlyConfigured(
        f"CELERY_VISIBILITY_TIMEOUT ({CELERY_VISIBILITY_TIMEOUT}) must exceed TERMINUS_MAX_TIME_LIMIT "
        f"({TERMINUS_MAX_TIME_LIMIT}) + TERMINUS_BROKER_DELAY_MAX ({TERMINUS_BROKER_DELAY_MAX}): Redis would "
        "hand a running job's message to a second worker"
    )
if CELERY_BROKER_URL.startswith("filesystem"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
        "polling_interval": 0.2,  # the default 1 s adds up to a second to every hop
    }
elif CELERY_BROKER_URL.startswith(("redis", "rediss")):
    # Every message goes to the queue's priority-3 list; a job whose worker died is published again
    # at priority 0 (tasks.submit.outbox.FIRST), which kombu serves first, so it runs again at once
    # instead of behind the backlog (RabbitMQ already gives a dead consumer's messages back in place).
    CELERY_TASK_DEFAULT_PRIORITY = 3
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
        "unacked_restore_interval": env_int("CELERY_UNACKED_RESTORE_INTERVAL", 10, minimum=1),
        "unacked_restore_throttle": env_int("CELERY_UNACKED_RESTORE_THROTTLE", 1, minimum=1),
        "socket_connect_timeout": 2,
        "socket_timeout": 30,  # redis-py 8 defaults to 5 s, which breaks long blocking reads
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# Celery's Django fixup closes the database connection around every task unless this is set,
# which costs a connection per job (measured: 2,076 connections for 2,070 tasks). Reusing it for
# this many tasks is safe because every record write retries on a broken connection.
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1000, minimum=0) or None
# Poison messages (undecodable, unknown task, malformed) are recorded as dead letters, not dropped.
CELERY_WORKER_CONSUMER = "tasks.failure.poison:TerminusConsumer"
if CELERY_BROKER_URL.startswith(("amqp", "pyamqp")):
    # RabbitMQ: work queues dead-letter broker-level rejects to a real DLX; a worker that consumes
    # dead_letter also drains dead_letter.raw into records. Queue arguments cannot change once a
    # queue exists: a new argument means a new queue name.
    from kombu import Exchange, Queue

    _dlx = Exchange("terminus.dlx", type="direct")
    CELERY_TASK_QUEUES = [
        Queue(
            name,
            Exchange(name, type="direct"),
            routing_key=name,
            queue_arguments={
                "x-dead-letter-exchange": _dlx.name,
                "x-dead-letter-routing-key": "dead_letter.raw",
                # RabbitMQ 3.12+ (older servers ignore it and apply rabbitmq.conf's consumer_timeout,
                # 30 min by default: tasks.fleet.broker_window warns at worker start).
                "x-consumer-timeout": CELERY_VISIBILITY_TIMEOUT * 1000,
            },
        )
        for name in [*TERMINUS_QUEUES, "dead_letter"]
    ] + [Queue("dead_letter.raw", _dlx, routing_key="dead_letter.raw")]

# ---------------------------------------------------------------------------------------------
# Crons: the beat schedule (tasks/crons/beat.py), the reaper, health checks, retention
# ---------------------------------------------------------------------------------------------
# Crons run on a queue of their own, so a backlog of jobs never delays the reaper.
TERMINUS_CRON_QUEUE = env_str("TERMINUS_CRON_QUEUE", "crons")
TERMINUS_CRON_MODULES = env_list("TERMINUS_CRON_MODULES", [])  # modules adding crons with @cron(...)
# Each is seconds, aligned by beat to multiples of itself (the reaper on every whole minute), or a
# crontab expression ("0 3 * * *") read in TIME_ZONE.
TERMINUS_REAPER_INTERVAL = env_schedule("TERMINUS_REAPER_INTERVAL", 60)
TERMINUS_HEALTH_INTERVAL = env_schedule("TERMINUS_HEALTH_INTERVAL", 120)
TERMINUS_ALERT_FLUSH_INTERVAL = env_schedule("TERMINUS_ALERT_FLUSH_INTERVAL", 60)
TERMINUS_ROLLUP_INTERVAL = env_schedule("TERMINUS_ROLLUP_INTERVAL", 3600)
TERMINUS_CLEANUP_INTERVAL = env_schedule("TERMINUS_CLEANUP_INTERVAL", 86400)
# The longest wait between two reaper runs (a crontab's longest gap): the readiness limits below scale with it.
_REAPER_GAP = round(
    parse_schedule(TERMINUS_REAPER_INTERVAL, name="TERMINUS_REAPER_INTERVAL").longest_gap(ZoneInfo(TIME_ZONE))
)
# A cron run with no recorded end this long past its time limit died with its worker.
TERMINUS_CRON_GRACE = env_int("TERMINUS_CRON_GRACE", 60, minimum=1)
# Worker liveness (tasks/recovery/liveness.py): each worker's main process records its node as seen
# this often (s); a node not seen for TERMINUS_WORKER_DEAD_AFTER is dead and its running jobs are
# lost (run again, or failed when no attempts remain) at the next repair pass.
TERMINUS_WORKER_HEARTBEAT = env_int("TERMINUS_WORKER_HEARTBEAT", 10, minimum=1)
TERMINUS_WORKER_DEAD_AFTER = env_int("TERMINUS_WORKER_DEAD_AFTER", 3 * TERMINUS_WORKER_HEARTBEAT, minimum=2)
# make run (project/devrun.py): after Ctrl-C the worker stops taking messages and finishes its running
# jobs; whatever still runs this many seconds later is killed.
TERMINUS_RUN_STOP_WAIT = env_int("TERMINUS_RUN_STOP_WAIT", 30, minimum=1)
# The repair pass (tasks/recovery/repairs.py) runs from every worker node, one at a time, this often
# (s; 0: only the reaper cron runs it); a node holding its lease longer than TERMINUS_REPAIR_LEASE is
# presumed dead mid-pass and another takes over.
TERMINUS_REPAIR_INTERVAL = env_int("TERMINUS_REPAIR_INTERVAL", 15, minimum=0)
TERMINUS_REPAIR_LEASE = env_int("TERMINUS_REPAIR_LEASE", 120, minimum=10)
# Reaper: a running job silent for its hard time limit plus this grace has lost its worker; the
# grace covers a hard-limit kill being recorded and a worker retrying writes through a DB blip.
TERMINUS_REAPER_GRACE = env_int("TERMINUS_REAPER_GRACE", 120, minimum=1)
TERMINUS_REAPER_UNDISPATCHED_AFTER = env_int("TERMINUS_REAPER_UNDISPATCHED_AFTER", 60, minimum=1)
# Queued jobs due this long ago (and past a later canary) lost their message; retrying jobs this
# long past next_retry_at lost theirs. Long enough that a busy worker is not mistaken for a loss.
TERMINUS_REAPER_QUEUED_AFTER = env_int("TERMINUS_REAPER_QUEUED_AFTER", 900, minimum=1)
TERMINUS_REAPER_RETRY_AFTER = env_int("TERMINUS_REAPER_RETRY_AFTER", 900, minimum=1)
TERMINUS_REAPER_BATCH = env_int("TERMINUS_REAPER_BATCH", 500, minimum=1)  # rows per step per tick
# on_terminal hooks: runs before giving up (and alerting); how long one run may take before it
# is presumed dead and run again.
TERMINUS_HOOK_MAX_ATTEMPTS = env_int("TERMINUS_HOOK_MAX_ATTEMPTS", 10, minimum=1)
TERMINUS_HOOK_LEASE = env_int("TERMINUS_HOOK_LEASE", 300, minimum=1)
# Health (/readyz and the health cron): thresholds of the readiness checks.
TERMINUS_CANARY_TIMEOUT = env_int("TERMINUS_CANARY_TIMEOUT", 300, minimum=1)
TERMINUS_READY_BROKER_TIMEOUT = env_float("TERMINUS_READY_BROKER_TIMEOUT", 2.0, minimum=0.1)
TERMINUS_READY_PING_TIMEOUT = env_float("TERMINUS_READY_PING_TIMEOUT", 1.0, minimum=0.1)
TERMINUS_READY_BEAT_MAX_AGE = env_int("TERMINUS_READY_BEAT_MAX_AGE", max(180, 3 * _REAPER_GAP), minimum=1)
TERMINUS_READY_DLQ_MAX_OPEN = env_int("TERMINUS_READY_DLQ_MAX_OPEN", 1000, minimum=0)
TERMINUS_READY_DLQ_MAX_AGE = env_int("TERMINUS_READY_DLQ_MAX_AGE", 86400, minimum=1)
TERMINUS_READY_DEADLINE_GRACE = env_int("TERMINUS_READY_DEADLINE_GRACE", 2 * _REAPER_GAP, minimum=0)
# /readyz shares its answer this long (0: every call runs the checks, pinging every worker).
TERMINUS_READY_CACHE_SECONDS = env_int("TERMINUS_READY_CACHE_SECONDS", 5, minimum=0)
# Retention (days) and how cleanup deletes: rows per transaction, seconds per run.
TERMINUS_RETENTION_SUCCEEDED_DAYS = env_int("TERMINUS_RETENTION_SUCCEEDED_DAYS", 7, minimum=1)
TERMINUS_RETENTION_FAILED_DAYS = env_int("TERMINUS_RETENTION_FAILED_DAYS", 30, minimum=1)
TERMINUS_RETENTION_CANCELLED_DAYS = env_int("TERMINUS_RETENTION_CANCELLED_DAYS", 7, minimum=1)
TERMINUS_RETENTION_TASK_RESULTS_DAYS = env_int("TERMINUS_RETENTION_TASK_RESULTS_DAYS", 7, minimum=1)
TERMINUS_RETENTION_CRON_RUNS_DAYS = env_int("TERMINUS_RETENTION_CRON_RUNS_DAYS", 14, minimum=1)
TERMINUS_RETENTION_ALERTS_DAYS = env_int("TERMINUS_RETENTION_ALERTS_DAYS", 30, minimum=1)
TERMINUS_RETENTION_ROLLUPS_DAYS = env_int("TERMINUS_RETENTION_ROLLUPS_DAYS", 400, minimum=1)
TERMINUS_RETENTION_WORKER_NODES_DAYS = env_int("TERMINUS_RETENTION_WORKER_NODES_DAYS", 14, minimum=1)
TERMINUS_CLEANUP_BATCH = env_int("TERMINUS_CLEANUP_BATCH", 1000, minimum=1)
TERMINUS_CLEANUP_MAX_SECONDS = env_int("TERMINUS_CLEANUP_MAX_SECONDS", 1800, minimum=1)
if TERMINUS_CLEANUP_MAX_SECONDS > 3000:
    raise ImproperlyConfigured("TERMINUS_CLEANUP_MAX_SECONDS must stay below the cleanup cron's 3600 s time limit")
TERMINUS_ROLLUP_HOURS = env_int("TERMINUS_ROLLUP_HOURS", 3, minimum=1)  # complete hours recomputed per run
# Beat stamps each cron message with its tick (the lock key); its entries come from tasks/crons/beat.py.
CELERY_BEAT_SCHEDULER = "tasks.crons.beat:Scheduler"
CELERY_TIMEZONE = TIME_ZONE  # beat reads crontab schedules in Django's zone, as the admin shows them
# Cleanup deletes django-celery-results rows in batches; Celery's own backend_cleanup (one
# DELETE of every expired row, daily at 4:00) would otherwise run too, unrecorded.
CELERY_RESULT_EXPIRES = None

# ---------------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------------
LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
# json: one JSON object per line (log shippers); console: readable lines for a terminal.
LOG_FORMAT = env_str("LOG_FORMAT", "json" if PRODUCTION else "console")
from project.logging import logging_config  # noqa: E402  (structlog wiring, no application code)
from project.sentry import init as init_sentry  # noqa: E402  (Sentry wiring, no application code)

LOGGING = logging_config(level=LOG_LEVEL, fmt=LOG_FORMAT)

# ---------------------------------------------------------------------------------------------
# Metrics (GET /metrics; results/ops/metrics.py)
# ---------------------------------------------------------------------------------------------
# /metrics requires "Authorization: Bearer <token>" when a token is set (its bearer also gets
# /readyz's details). Production refuses to start without one, unless TERMINUS_METRICS_PUBLIC says
# /metrics is served on a network only Prometheus reaches: it shows job counts, queues and workers.
TERMINUS_METRICS_TOKEN = env_str("TERMINUS_METRICS_TOKEN")
TERMINUS_METRICS_PUBLIC = env_bool("TERMINUS_METRICS_PUBLIC", False)
if PRODUCTION and not TERMINUS_METRICS_TOKEN and not TERMINUS_METRICS_PUBLIC:
    raise ImproperlyConfigured(
        "TERMINUS_METRICS_TOKEN is required when TERMINUS_ENV=production (or TERMINUS_METRICS_PUBLIC=true "
        "to serve /metrics without one, on a network only Prometheus reaches)"
    )
# Counting terminal jobs scans the job table (about 0.2 s per million rows): share that count
# through the cache for this long (0: count on every scrape). Open jobs are always counted live.
TERMINUS_METRICS_CACHE_SECONDS = env_int("TERMINUS_METRICS_CACHE_SECONDS", 60, minimum=0)
# How long a scrape (and `manage.py fleet`) waits for the workers' answers, seconds.
TERMINUS_METRICS_INSPECT_TIMEOUT = env_float("TERMINUS_METRICS_INSPECT_TIMEOUT", 1.0, minimum=0.1)
# Where worker processes count attempt durations, retries and failures (prometheus_client
# multiprocess mode); /metrics adds up every worker directory under it that it can see.
PROMETHEUS_MULTIPROC_DIR = env_str("PROMETHEUS_MULTIPROC_DIR")
# A worker serves its own event metrics on this port (0: off); scrape it per pod/host.
TERMINUS_WORKER_METRICS_PORT = env_int("TERMINUS_WORKER_METRICS_PORT", 0, minimum=0)
TERMINUS_WORKER_METRICS_ADDR = env_str("TERMINUS_WORKER_METRICS_ADDR", "0.0.0.0")  # noqa: S104

# ---------------------------------------------------------------------------------------------
# Sentry
# ---------------------------------------------------------------------------------------------
SENTRY_DSN = env_str("SENTRY_DSN")
if SENTRY_DSN:
    # Initialised here, before Celery imports its tracer, so the Celery integration patches it.
    init_sentry(
        dsn=SENTRY_DSN, environment=env_str("SENTRY_ENVIRONMENT", TERMINUS_ENV), release=env_str("SENTRY_RELEASE")
    )
