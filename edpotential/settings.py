"""Settings for the CD2 credential registry.

Everything comes from the environment through django-environ (see .env.example
for every variable). Development needs no configuration: with DEBUG on, the
database is a SQLite file, the Celery broker is a folder, mail goes to the
console, and the secret and encryption keys are generated once under var/.
With DEBUG off, start-up refuses to go on without SECRET_KEY and FERNET_KEYS.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import environ
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

# ---------------------------------------------------------------------------
# Paths and environment
# ---------------------------------------------------------------------------
BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

env = environ.Env()
# A local .env (written by `make run`/`make test` with DEBUG=true) is read when
# present; real environment variables always win over it.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)


def _require(name: str) -> str:
    value = env.str(name, default="")
    if not value:
        raise ImproperlyConfigured(
            f"The environment variable {name} is not set. It is required when DEBUG is off; "
            f"see .env.example for what it must hold."
        )
    return value


def _development_secret(filename: str, make) -> str:
    """A secret generated once and kept under var/ (development only).

    Never derived from another secret: a leaked SECRET_KEY must not reveal the
    encryption key, and the other way round.
    """
    path = VAR_DIR / filename
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(make())
    return path.read_text().strip()


def _new_fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


# ---------------------------------------------------------------------------
# Core
# ---------------------------------------------------------------------------
if DEBUG:
    SECRET_KEY = env.str("SECRET_KEY", default="") or _development_secret(
        "secret_key", lambda: secrets.token_urlsafe(50)
    )
else:
    SECRET_KEY = _require("SECRET_KEY")

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"] if DEBUG else [])
SITE_URL = env.str("SITE_URL", default="http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "institutions.apps.InstitutionsConfig",
    "credentials.apps.CredentialsConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "edpotential.urls"
WSGI_APPLICATION = "edpotential.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

LANGUAGE_CODE = "en-gb"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# ---------------------------------------------------------------------------
# Database and cache
# ---------------------------------------------------------------------------
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=0)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and beat share the file in development: wait for locks
    # instead of failing with "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20

# The cache holds rate-limit counters, so every process must share it: Redis
# in production, a folder under var/ in development.
CACHES = {"default": env.cache("CACHE_URL", default=f"filecache://{VAR_DIR / 'cache'}")}

# ---------------------------------------------------------------------------
# Celery (read by edpotential/celery.py with the CELERY_ namespace)
# ---------------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    # Embedded broker for development: messages are files under var/celery,
    # so `make run` needs no Redis.
    _celery_dir = VAR_DIR / "celery"
    for _sub in ("queue", "processed"):
        (_celery_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_celery_dir / "queue"),
        "data_folder_out": str(_celery_dir / "queue"),
        "processed_folder": str(_celery_dir / "processed"),
        "store_processed": False,
    }
else:
    # Redis re-delivers an unacknowledged task after the visibility timeout;
    # it must exceed the longest countdown we schedule (verification retries
    # back off up to 6 hours), or a waiting task would run twice.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 12 * 3600}
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True  # tasks return small counts; nobody reads them
CELERY_TASK_ACKS_LATE = True  # a worker killed mid-task leaves the task to be redone
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=15 * 60)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=20 * 60)
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)

REMINDERS_HOUR = env.int("REMINDERS_HOUR", default=9)
REMINDERS_MINUTE = env.int("REMINDERS_MINUTE", default=0)
CELERY_BEAT_SCHEDULE: dict[str, dict] = {
    # Daily at REMINDERS_HOUR:REMINDERS_MINUTE (TIME_ZONE): mail every reminder
    # that has come due; safe to fire twice, each reminder is claimed once.
    "send-expiry-reminders": {
        "task": "credentials.tasks.send_expiry_reminders",
        "schedule": crontab(hour=REMINDERS_HOUR, minute=REMINDERS_MINUTE),
    },
    # Daily at 03:30, off-peak: re-check every active key against CD2 so a key
    # an admin deleted is noticed within a day, not when the pipeline fails.
    "verify-active-credentials": {
        "task": "credentials.tasks.verify_active_credentials",
        "schedule": crontab(hour=3, minute=30),
    },
    # Mondays at 08:00: the staff digest of what expires soon, what is
    # expired, failing or missing.
    "send-staff-digest": {
        "task": "credentials.tasks.send_staff_digest",
        "schedule": crontab(hour=8, minute=0, day_of_week="mon"),
    },
}

# ---------------------------------------------------------------------------
# Email
# ---------------------------------------------------------------------------
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="CD2 key registry <registry@localhost>")
SERVER_EMAIL = env.str("SERVER_EMAIL", default=DEFAULT_FROM_EMAIL)
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=30)
ADMINS = [tuple(a.split(":", 1)) for a in env.list("ADMINS", default=[])]
# Staff who receive the weekly digest (comma-separated addresses).
STAFF_DIGEST_RECIPIENTS = env.list("STAFF_DIGEST_RECIPIENTS", default=[])

# ---------------------------------------------------------------------------
# Encryption at rest
# ---------------------------------------------------------------------------
# Comma-separated Fernet keys, newest first: the first encrypts, all decrypt.
if DEBUG:
    FERNET_KEYS = env.list("FERNET_KEYS", default=[]) or [_development_secret("fernet.key", _new_fernet_key)]
else:
    FERNET_KEYS = env.list("FERNET_KEYS", default=[]) or [_require("FERNET_KEYS")]

# ---------------------------------------------------------------------------
# Canvas Data 2
# ---------------------------------------------------------------------------
# The same default as Instructure's official client (DAP_API_URL).
CD2_API_URL = env.str("CD2_API_URL", default="https://api-gateway.instructure.com").rstrip("/")
CD2_CONNECT_TIMEOUT = env.float("CD2_CONNECT_TIMEOUT", default=5.0)
CD2_READ_TIMEOUT = env.float("CD2_READ_TIMEOUT", default=20.0)
# What we ask the customer to enter at identity.instructure.com.
CD2_KEY_NAME = env.str("CD2_KEY_NAME", default="EdPotential")
CD2_RECOMMENDED_EXPIRY = env.str("CD2_RECOMMENDED_EXPIRY", default="1 year")
# A key within this many days of its expiry date shows as "expiring".
CD2_EXPIRING_DAYS = env.int("CD2_EXPIRING_DAYS", default=30)
SUBMISSION_LINK_DAYS = env.int("SUBMISSION_LINK_DAYS", default=14)

# Days before expires_on at which contacts are reminded; 0 is the day itself.
REMINDER_DAYS_BEFORE = env.list("REMINDER_DAYS_BEFORE", cast=int, default=[60, 30, 14, 7, 3, 1, 0])
# After expiry, remind again every this many days until a new key is active.
REMINDER_REPEAT_AFTER_EXPIRY_DAYS = env.int("REMINDER_REPEAT_AFTER_EXPIRY_DAYS", default=7)

# ---------------------------------------------------------------------------
# Security
# ---------------------------------------------------------------------------
DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024  # our forms are a few short fields
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"

# ---------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
}
