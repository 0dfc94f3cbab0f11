"""Settings for the CD2 credential registry.

Everything comes from the environment through django-environ (see .env.example
for every variable). Development needs no configuration: with DEBUG on, the
database is a SQLite file, the Celery broker is a folder, mail goes to the
console, and the secret and encryption keys are generated once under var/.
With DEBUG off none of those fallbacks is used: start-up refuses to go on
without every variable in PRODUCTION_REQUIRED, with a SITE_URL that is not
https, or with "*" in ALLOWED_HOSTS, and says which.
"""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path

import environ
from celery.schedules import crontab
from csp.constants import NONCE as CSP_NONCE
from csp.constants import NONE as CSP_NONE
from csp.constants import SELF as CSP_SELF
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

# Each has a development fallback (below) that must never reach production:
# console mail, a SQLite file, a folder broker, a file cache, generated keys.
PRODUCTION_REQUIRED = (
    "SECRET_KEY",
    "FERNET_KEYS",
    "CLIENT_ID_INDEX_KEY",
    "SITE_URL",
    "DATABASE_URL",
    "CACHE_URL",
    "CELERY_BROKER_URL",
    "EMAIL_URL",
)


def _refuse_production_fallbacks() -> None:
    """Raise ImproperlyConfigured naming every production variable that is missing or unsafe."""
    problems = [
        f"{name} is not set. It is required when DEBUG is off; see .env.example for what it must hold."
        for name in PRODUCTION_REQUIRED
        if not env.str(name, default="")
    ]
    site_url = env.str("SITE_URL", default="")
    if site_url and not site_url.startswith("https://"):
        problems.append("SITE_URL must start with https:// when DEBUG is off (links in emails must be HTTPS).")
    if "*" in env.list("ALLOWED_HOSTS", default=[]):
        problems.append('ALLOWED_HOSTS must not contain "*" when DEBUG is off: list the host names this site serves.')
    if problems:
        raise ImproperlyConfigured(" ".join(problems))


if not DEBUG:
    _refuse_production_fallbacks()


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
    SECRET_KEY = env.str("SECRET_KEY")

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"] if DEBUG else [])
# Development's ports (Procfile.dev: runserver on WEB_PORT, the fake CD2 gateway
# on CD2_PORT). They move SITE_URL and, with DEBUG on, CD2_API_URL too, unless
# those are set: `WEB_PORT=8001 CD2_PORT=8766 make run` needs no edit of .env.
WEB_PORT = env.int("WEB_PORT", default=8000)
CD2_PORT = env.int("CD2_PORT", default=8765)
SITE_URL = env.str("SITE_URL", default=f"http://127.0.0.1:{WEB_PORT}").rstrip("/")

INSTALLED_APPS = [
    # django.contrib.admin, with the staff site (credentials/admin/site.py) as its default site.
    "credentials.admin.apps.StaffAdminConfig",
    # Before django.contrib.auth: its createsuperuser (edpotential/management/) takes the place of auth's.
    "edpotential.apps.SecurityConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "institutions.apps.InstitutionsConfig",
    "credentials.apps.CredentialsConfig",
    # The data pipeline's API (api/__init__.py says why DRF and drf-spectacular).
    "rest_framework",
    "drf_spectacular",
    # Swagger UI's files for /api/v1/docs/, served from our static files (no CDN).
    "drf_spectacular_sidecar",
    "api.apps.ApiConfig",
    # Bulk onboarding from CSV/XLSX in the admin (credentials/services/onboarding.py).
    "import_export",
    # Security (see the Security section and edpotential/security.py).
    "django_otp",
    # The next three in words for staff (credentials/admin/apps.py: "Authenticator apps", not "Otp_Totp").
    "credentials.admin.apps.AuthenticatorAppsConfig",
    "credentials.admin.apps.RecoveryCodesConfig",
    "credentials.admin.apps.LockoutsConfig",
    "csp",
    # Staff sign-in with the company's identity provider (OIDC_ISSUER; off when unset).
    "staffsso.apps.StaffSsoConfig",
]
if DEBUG:
    # The demo data and the demo login's code (devtools/): never in production.
    INSTALLED_APPS.append("devtools.apps.DevtoolsConfig")

MIDDLEWARE = [
    # First: request and database numbers for /metrics, of every answer (requestinfo/metrics.py).
    "requestinfo.metrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # The customer's pages (and the 400, 413 and 503 pages below) in the browser's language:
    # Accept-Language, or the switcher's cookie; the staff site, SSO and the API stay in English.
    "credentials.middleware.CustomerLocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    # Before CsrfViewMiddleware, whose process_view reads the body.
    "edpotential.security.MalformedRequestMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "edpotential.security.SessionLifetimeMiddleware",
    # SSO sessions: their own lifetime, and re-validated at the provider every few minutes.
    "staffsso.middleware.SsoSessionMiddleware",
    # After the user is known: a staff member's own zone on the staff site.
    "credentials.middleware.StaffTimeZoneMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    # A body over DATA_UPLOAD_MAX_MEMORY_SIZE gets the 413 page before the
    # CSRF check reads it (that happens in process_view, after every __call__).
    "edpotential.security.BodySizeLimitMiddleware",
    "edpotential.security.DatabaseUnavailableMiddleware",
    # Last, as django-axes requires: turns a lockout into a 429 page.
    "axes.middleware.AxesMiddleware",
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
                "csp.context_processors.nonce",  # {{ CSP_NONCE }} for the rare inline <script nonce=...>
            ],
            # |day |weekday |moment |month |possessive in every template: one way to write dates and names.
            "builtins": ["credentials.templatetags.cd2_format"],
        },
    },
]

LANGUAGE_CODE = "en-gb"
# The languages of the customer's pages and mails (the staff site stays in English).
# Each has a catalogue in locale/<ll_CC>/LC_MESSAGES/django.po; `make install` and
# `make test` compile them (`manage.py compilemessages`). An institution's mails are
# in Institution.language; a page follows the browser's Accept-Language.
LANGUAGES = [
    ("en-gb", "English"),
    ("fr-ca", "Français (Canada)"),
    ("es", "Español"),
]
LOCALE_PATHS = [BASE_DIR / "locale"]
LANGUAGE_COOKIE_SECURE = not DEBUG
LANGUAGE_COOKIE_HTTPONLY = True
LANGUAGE_COOKIE_SAMESITE = "Lax"
# Django's own date display (admin lists, read-only fields) in the house formats of credentials/formatting.py.
FORMAT_MODULE_PATH = ["edpotential.formats"]
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]  # the public pages' own CSS and JS (static/credentials/)
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
# With DEBUG off these fallbacks are never used (PRODUCTION_REQUIRED).
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
# Connections are kept between requests in production (seconds; 0 closes each
# after its request): opening one was 5.5 ms of an 8.6 ms API request, and a
# trivial authenticated API view served 531 requests/s kept against 216/s not
# (issue 29). Development closes them: runserver starts a thread per request,
# each of which would keep a connection of its own.
PRODUCTION_CONN_MAX_AGE = 600
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=0 if DEBUG else PRODUCTION_CONN_MAX_AGE)
# A connection kept between requests (CONN_MAX_AGE) is tested before a
# request uses it: after a database restart the first request of each web
# worker reconnects instead of failing on the dead connection (docs/RUNBOOK.md,
# the outage table; tests/outage/test_postgresql.py).
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
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
    for _sub in ("queue", "processed", "control"):
        (_celery_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_celery_dir / "queue"),
        "data_folder_out": str(_celery_dir / "queue"),
        "processed_folder": str(_celery_dir / "processed"),
        # Broadcast (pidbox) messages: without this kombu writes ./control/.
        "control_folder": str(_celery_dir / "control"),
        "store_processed": False,
    }
else:
    # Redis re-delivers an unacknowledged task after the visibility timeout;
    # it must exceed the longest countdown we schedule (verification retries
    # back off up to 6 hours), or a waiting task would run twice.
    # socket_connect_timeout: with the broker's host gone, publishing (a web
    # request queueing a delivery after its notice is stored) gives up within
    # seconds instead of the operating system's minutes; the sweep queues the
    # notice later (docs/RUNBOOK.md, the outage table).
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 12 * 3600, "socket_connect_timeout": 2}
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
    # Hourly at REMINDERS_MINUTE: each run reaches the institutions whose own
    # clock has passed REMINDERS_HOUR:REMINDERS_MINUTE today (their zone), so
    # a customer is reminded in their morning, once per step and local day,
    # whatever the length of the day (DST) or a missed hour; safe to fire
    # twice, each step is claimed once. Owners get their summary at that
    # hour of their own zone.
    "send-expiry-reminders": {
        "task": "credentials.tasks.send_expiry_reminders",
        "schedule": crontab(minute=REMINDERS_MINUTE),
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
    # Hourly at :17: queue a re-check for keys stored while CD2 was down whose
    # own re-check was lost (broker down) or ran out of retries.
    "verify-pending-credentials": {
        "task": "credentials.tasks.verify_pending_credentials",
        "schedule": crontab(minute=17),
    },
    # Every 5 minutes: re-queue outbox notices whose retry is due and those
    # stuck in "sending" past their lease (a worker killed mid-send), so a
    # lost delivery goes out again within minutes, not after the broker's
    # 12-hour visibility timeout.
    "sweep-notices": {
        "task": "credentials.tasks.sweep_notices",
        "schedule": crontab(minute="*/5"),
    },
    # Daily at 04:10: deactivate staff the identity provider has not vouched
    # for in OIDC_DEACTIVATE_AFTER_DAYS (a leaver nobody removed here); with
    # SSO off it records an empty run.
    "sso-deactivate-unseen": {
        "task": "staffsso.tasks.deactivate_unseen_staff",
        "schedule": crontab(hour=4, minute=10),
    },
    # Every minute: move the counters waiting in Redis into their rows
    # (credentials/metric_buffer.py), so a Redis restarted without its data
    # loses at most a minute of counts even when nobody scrapes /metrics.
    "flush-metric-counts": {
        "task": "credentials.tasks.metrics_flush_task",
        "schedule": crontab(minute="*"),
    },
}
# When each scheduled job (by its beat entry name) counts as overdue: its
# period plus slack. /healthz answers 503 and the dashboard turns red past it.
SCHEDULED_JOBS_OVERDUE_AFTER = {
    "send-expiry-reminders": dt.timedelta(hours=2),
    "verify-active-credentials": dt.timedelta(hours=26),
    "send-staff-digest": dt.timedelta(days=7, hours=2),
    "verify-pending-credentials": dt.timedelta(hours=2),
    "sweep-notices": dt.timedelta(minutes=30),
    "sso-deactivate-unseen": dt.timedelta(hours=26),
}
# What staff read for each scheduled job (the dashboard, alerts): words, not the beat entry's name.
SCHEDULED_JOB_LABELS = {
    "send-expiry-reminders": "Expiry reminders (hourly)",
    "verify-active-credentials": "Daily check of every active key",
    "send-staff-digest": "Staff digest (Mondays)",
    "verify-pending-credentials": "Re-check of keys waiting for CD2 (hourly)",
    "sweep-notices": "Outbox sweep: retries and stuck sends (every 5 minutes)",
    "sso-deactivate-unseen": "Deactivate staff the identity provider no longer knows (daily)",
}
# Prometheus' scrape of /metrics must bring this bearer token (a long random string; rotate it like a
# password). Unset: /metrics answers 404 to everyone.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
# Where the registry's counters wait between an event and their MetricCount row (credentials/metric_buffer.py):
# a Redis database every web and worker process reaches. Default: the cache's Redis. Empty (no Redis cache,
# as in development): each event writes its row, as when Redis is down.
METRICS_REDIS_URL = env.str(
    "METRICS_REDIS_URL",
    default=CACHES["default"]["LOCATION"] if "redis" in CACHES["default"]["BACKEND"].lower() else "",
)
# Staff alerts in chat (credentials/services/alerts.py): apprise URLs, comma-separated (Slack, Microsoft
# Teams, Discord, Google Chat, json:// ...). Each channel hears of every alert. Empty: no chat alerts.
STAFF_ALERT_URLS = env.list("STAFF_ALERT_URLS", default=[])
# An alert waits this long for others to join it: the events of one run arrive as one message.
STAFF_ALERT_GROUP_SECONDS = env.int("STAFF_ALERT_GROUP_SECONDS", default=300)
# Optional: a URL fetched after each successful reminder run (healthchecks.io
# style dead man's switch: it alerts when the pings stop).
REMINDERS_PING_URL = env.str("REMINDERS_PING_URL", default="")

# ---------------------------------------------------------------------------
# Outbox (credentials.services.outbox)
# ---------------------------------------------------------------------------
# A notice being sent is leased this long; a worker killed mid-send leaves
# it to the sweep after the lease. Far longer than one send (EMAIL_TIMEOUT).
# NOTICE_LEASE_SECONDS, when set, overrides the minutes: the kill -9 test
# (tests/e2e/test_worker_killed_e2e.py) runs its workers with a few seconds.
NOTICE_LEASE = dt.timedelta(
    seconds=env.int("NOTICE_LEASE_SECONDS", default=60 * env.int("NOTICE_LEASE_MINUTES", default=5))
)
# Retries back off exponentially (first after NOTICE_RETRY_FIRST, doubling,
# at most NOTICE_RETRY_MAX apart, jittered) until this long after the notice
# was written: a mail server down for two days still gets every notice.
NOTICE_RETRY_FIRST = dt.timedelta(minutes=1)
NOTICE_RETRY_MAX = dt.timedelta(hours=4)
NOTICE_GIVE_UP_AFTER = dt.timedelta(hours=env.int("NOTICE_GIVE_UP_AFTER_HOURS", default=72))
# Due notices per delivery task (deliver_notices): a task sends its few over
# one SMTP connection; the workers' concurrency sends tasks side by side
# (how many send at once is the worker's --concurrency, docs/RUNBOOK.md).
OUTBOX_TASK_BATCH = env.int("OUTBOX_TASK_BATCH", default=20)

# ---------------------------------------------------------------------------
# Email
# ---------------------------------------------------------------------------
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="CD2 key registry <registry@localhost>")
# Who customer mails come from: the From header's display name (with DEFAULT_FROM_EMAIL's
# address) and the signature under every mail.
REGISTRY_SENDER_NAME = env.str("REGISTRY_SENDER_NAME", default="EdPotential")
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
    FERNET_KEYS = env.list("FERNET_KEYS")

# The key of the Client ID's blind index (HMAC-SHA256, credentials.fields.client_id_index):
# it lets the database refuse one Client ID for two institutions without
# storing the Client ID in the clear. Its own secret, never a Fernet key, so
# rotating FERNET_KEYS leaves every index as it is; changing this key
# invalidates every stored index (a new one needs `manage.py migrate` of a
# refill, see SECURITY.md).
if DEBUG:
    CLIENT_ID_INDEX_KEY = env.str("CLIENT_ID_INDEX_KEY", default="") or _development_secret(
        "client_id_index.key", lambda: secrets.token_urlsafe(32)
    )
else:
    CLIENT_ID_INDEX_KEY = env.str("CLIENT_ID_INDEX_KEY")  # present: _refuse_production_fallbacks checked

# ---------------------------------------------------------------------------
# Canvas Data 2
# ---------------------------------------------------------------------------
# The same default as Instructure's official client (DAP_API_URL); in
# development the fake gateway `make run` starts (nothing talks to Instructure).
CD2_API_URL = env.str(
    "CD2_API_URL", default=f"http://127.0.0.1:{CD2_PORT}" if DEBUG else "https://api-gateway.instructure.com"
).rstrip("/")
CD2_CONNECT_TIMEOUT = env.float("CD2_CONNECT_TIMEOUT", default=5.0)
CD2_READ_TIMEOUT = env.float("CD2_READ_TIMEOUT", default=20.0)
# What we ask the customer to enter at identity.instructure.com.
CD2_KEY_NAME = env.str("CD2_KEY_NAME", default="EdPotential")
CD2_RECOMMENDED_EXPIRY = env.str("CD2_RECOMMENDED_EXPIRY", default="1 year")
# A key within this many days of its expiry date shows as "expiring".
CD2_EXPIRING_DAYS = env.int("CD2_EXPIRING_DAYS", default=30)
# The daily re-check of active keys is spread evenly over this many seconds,
# so the gateway never sees every key at once (it rate-limits with 429).
CD2_CHECK_SPREAD_SECONDS = env.int("CD2_CHECK_SPREAD_SECONDS", default=2 * 3600)
# Requests per second the CD2 gateway allows us (CD2 publishes no number; a
# check costs two). With more keys than the spread above fits at this rate,
# the checks are spread longer: 2 x keys / rate seconds, kept below 90% of the
# broker's visibility timeout (a warning says when even that is too short).
CD2_GATEWAY_REQUESTS_PER_SECOND = env.float("CD2_GATEWAY_REQUESTS_PER_SECOND", default=5.0)
SUBMISSION_LINK_DAYS = env.int("SUBMISSION_LINK_DAYS", default=14)
# "Send submission links" to many institutions at once mails at most this many
# per second (queued, spaced by countdown), to stay inside the mail provider's rate.
LINK_BULK_PER_SECOND = env.float("LINK_BULK_PER_SECOND", default=5.0)

# Bulk onboarding (django-import-export): importing needs the "add institution"
# permission; each confirmed import is one transaction.
IMPORT_EXPORT_IMPORT_PERMISSION_CODE = "add"
IMPORT_EXPORT_USE_TRANSACTIONS = True
# What an uploaded file may hold (credentials/services/spreadsheets.py): past
# any of these it is refused, in words, before it costs a worker much memory or
# time. Rows under the header; the XLSX limits are read from the zip's
# directory before anything is unpacked.
IMPORT_MAX_ROWS = env.int("IMPORT_MAX_ROWS", default=5000)
IMPORT_MAX_COLUMNS = env.int("IMPORT_MAX_COLUMNS", default=30)
IMPORT_MAX_CELL_CHARACTERS = env.int("IMPORT_MAX_CELL_CHARACTERS", default=2000)
IMPORT_MAX_UNPACKED_BYTES = env.int("IMPORT_MAX_UNPACKED_BYTES", default=16 * 1024 * 1024)
IMPORT_MAX_COMPRESSION_RATIO = env.int("IMPORT_MAX_COMPRESSION_RATIO", default=100)

# Days before expires_on at which contacts are reminded; 0 is the day itself.
REMINDER_DAYS_BEFORE = env.list("REMINDER_DAYS_BEFORE", cast=int, default=[60, 30, 14, 7, 3, 1, 0])
# After expiry, remind again every this many days (weekly) for
# REMINDER_WEEKLY_AFTER_EXPIRY_FOR_DAYS days, then every
# REMINDER_MONTHLY_REPEAT_DAYS days, until a new key is active. Institutions
# that never answer are not mailed weekly forever; staff keep seeing the key.
REMINDER_REPEAT_AFTER_EXPIRY_DAYS = env.int("REMINDER_REPEAT_AFTER_EXPIRY_DAYS", default=7)
REMINDER_WEEKLY_AFTER_EXPIRY_FOR_DAYS = env.int("REMINDER_WEEKLY_AFTER_EXPIRY_FOR_DAYS", default=42)
REMINDER_MONTHLY_REPEAT_DAYS = env.int("REMINDER_MONTHLY_REPEAT_DAYS", default=30)
# ... and stop this many calendar months after expiry: a key that lapsed long
# ago is staff's to chase, not the reminders' (credentials/days.py). The
# owner's summary says once that a key's reminders ended; the admin shows it.
REMINDER_STOP_AFTER_EXPIRY_MONTHS = env.int("REMINDER_STOP_AFTER_EXPIRY_MONTHS", default=6)
# No reminder this soon after a key was accepted (unless it expires within
# it): a contact who just chose a short key does not hear about it at once.
REMINDER_QUIET_AFTER_ACCEPTANCE = dt.timedelta(hours=env.int("REMINDER_QUIET_AFTER_ACCEPTANCE_HOURS", default=24))

# ---------------------------------------------------------------------------
# Pipeline API (api/): each view sets its own authentication, scope,
# throttles and error format; these defaults only keep any other DRF view
# closed and give the schema its title.
# ---------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["api.authentication.ApiTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "api.problems.problem_exception_handler",
}
# Webhooks (api/webhooks.py): each POST to a receiver waits at most this long;
# a slow receiver is retried by the outbox rather than holding a worker.
WEBHOOK_TIMEOUT_SECONDS = env.float("WEBHOOK_TIMEOUT_SECONDS", default=5.0)
# Receivers must be https on a public address (no SSRF into our network).
# Development and tests may use http://127.0.0.1 (on by default with DEBUG).
WEBHOOK_ALLOW_LOOPBACK = env.bool("WEBHOOK_ALLOW_LOOPBACK", default=DEBUG)
SPECTACULAR_SETTINGS = {
    "TITLE": "CD2 credential registry: pipeline API",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # /api/v1/docs/: Swagger UI from drf-spectacular-sidecar's static files, never a CDN; no call to
    # swagger.io's validator either.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None, "displayRequestDuration": True},
}

# ---------------------------------------------------------------------------
# Security
# ---------------------------------------------------------------------------
DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024  # our forms are a few short fields
# A multipart body (a file: the admin's bulk import of institutions) may be
# larger; edpotential.security.BodySizeLimitMiddleware answers 413 above this.
UPLOAD_MAX_BODY_SIZE = 10 * 1024 * 1024
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"

# HTTPS only in production. Development serves plain HTTP on 127.0.0.1, where
# browsers would drop Secure and __Host- cookies.
SECURE_SSL_REDIRECT = not DEBUG
SECURE_HSTS_SECONDS = 0 if DEBUG else 365 * 24 * 3600  # one year
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
# Preloading commits the whole parent domain to HTTPS for good: a decision for
# whoever owns that domain, so off unless they opt in (hence security.W021 below).
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
# Set only behind our own reverse proxy that overwrites X-Forwarded-Proto and
# appends X-Forwarded-For; otherwise a client could claim HTTPS or any address.
BEHIND_TRUSTED_PROXY = env.bool("BEHIND_TRUSTED_PROXY", default=False)
if BEHIND_TRUSTED_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]

# Cookies: HttpOnly, Secure and __Host- prefixed (host-only, path /, HTTPS)
# in production. The CSRF cookie can be HttpOnly because our forms carry the
# token in a hidden field; no page reads it from JavaScript.
SESSION_COOKIE_NAME = "sessionid" if DEBUG else "__Host-sessionid"
CSRF_COOKIE_NAME = "csrftoken" if DEBUG else "__Host-csrftoken"
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = not DEBUG
SESSION_COOKIE_HTTPONLY = CSRF_COOKIE_HTTPONLY = True
# Lax keeps a link from a staff email into the admin signed in; Strict on the
# CSRF cookie costs nothing since a cross-site GET just gets a fresh token.
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Strict"
CSRF_TRUSTED_ORIGINS = [SITE_URL] if SITE_URL.startswith("https://") else []

# Staff sessions end after 30 idle minutes (every request pushes the expiry
# on) and 12 hours after sign-in however active (SessionLifetimeMiddleware).
SESSION_COOKIE_AGE = 30 * 60
SESSION_SAVE_EVERY_REQUEST = True
SESSION_ABSOLUTE_SECONDS = 12 * 3600

# Redis down must not stop a customer handing us a key: the rate-limit cache
# degrades to "no limit" (edpotential/cache.py) and gives up on Redis fast.
if CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache":
    CACHES["default"]["BACKEND"] = "edpotential.cache.FailOpenRedisCache"
    CACHES["default"].setdefault("OPTIONS", {}).update(socket_connect_timeout=2, socket_timeout=2)
RATELIMIT_FAIL_OPEN = True

# whitenoise serves the static files in production (after collectstatic); in
# development and tests it reads them live, so no collectstatic is needed.
WHITENOISE_AUTOREFRESH = DEBUG

# Content-Security-Policy on every page (django-csp 4): nothing inline unless
# it carries the per-request nonce; the one inline <style> of Django's admin
# change list (shown when a list has no actions) is allowed by its hash.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [CSP_SELF],
        "script-src": [CSP_SELF, CSP_NONCE],
        "style-src": [
            CSP_SELF,
            CSP_NONCE,
            "'sha256-blvLUW3UscWqsXGByNOqdBboM+ShWAuugp2mC/wbafU='",  # admin/change_list.html
        ],
        "img-src": [CSP_SELF, "data:"],
        "font-src": [CSP_SELF],
        "connect-src": [CSP_SELF],
        "object-src": [CSP_NONE],
        "base-uri": [CSP_NONE],
        "form-action": [CSP_SELF],
        "frame-ancestors": [CSP_NONE],
    },
}

# Staff sign-in: password plus a one-time code (the staff admin site,
# credentials/admin/site.py, is django-otp's OTPAdminSite). Lockout after
# AXES_FAILURE_LIMIT failures for one username from one address, so nobody can
# lock a colleague out from elsewhere; and after LOCKOUT_IP_FAILURE_LIMIT
# failures from one address whatever the usernames, so nobody tries a password
# against every account (edpotential.security.AddressWideLockoutHandler: axes
# itself has one limit).
AUTHENTICATION_BACKENDS = [
    "edpotential.security.WebLoginAxesBackend",  # must come first (django-axes)
    "django.contrib.auth.backends.ModelBackend",
    # Sign-in with the identity provider (answers only its own callback; off without OIDC_ISSUER).
    "staffsso.backends.StaffOIDCBackend",
]
AXES_HANDLER = "edpotential.security.AddressWideLockoutHandler"
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
# Higher than AXES_FAILURE_LIMIT: colleagues behind one office address share it.
LOCKOUT_IP_FAILURE_LIMIT = env.int("LOCKOUT_IP_FAILURE_LIMIT", default=10)
AXES_COOLOFF_TIME = dt.timedelta(minutes=env.int("AXES_COOLOFF_MINUTES", default=30))
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "requestinfo.client_ip"
# Staff passwords (createsuperuser, the admin's password forms): at least 12
# characters, not a common password, not all digits, not like the username,
# name or email address.
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
OTP_TOTP_ISSUER = env.str("OTP_TOTP_ISSUER", default="CD2 key registry")

# ---------------------------------------------------------------------------
# Staff sign-in with the company's identity provider (OpenID Connect, staffsso/)
# ---------------------------------------------------------------------------
# Off unless OIDC_ISSUER is set: then staff sign in with the provider, and the
# password form is for break-glass accounts only (SECURITY.md, docs/RUNBOOK.md
# per provider). Endpoints come from the issuer's discovery document.
OIDC_ISSUER = env.str("OIDC_ISSUER", default="").rstrip("/")
OIDC_CLIENT_ID = env.str("OIDC_CLIENT_ID", default="")
OIDC_CLIENT_SECRET = env.str("OIDC_CLIENT_SECRET", default="")
# What the sign-in button says: "Sign in with Google Workspace".
OIDC_PROVIDER_NAME = env.str("OIDC_PROVIDER_NAME", default="your identity provider")
OIDC_SCOPES = env.str("OIDC_SCOPES", default="openid email profile")
# Extra parameters of the authorization request, as a query string (Google:
# "access_type=offline&prompt=consent&hd=example.edu" for a refresh token).
OIDC_AUTH_PARAMS = env.str("OIDC_AUTH_PARAMS", default="")
# Only people whose verified email address is in one of these domains (required with SSO on).
OIDC_ALLOWED_EMAIL_DOMAINS = [d.lower().lstrip("@") for d in env.list("OIDC_ALLOWED_EMAIL_DOMAINS", default=[])]
# The ID token claim holding the person's groups (Entra ID app roles: "roles").
OIDC_GROUPS_CLAIM = env.str("OIDC_GROUPS_CLAIM", default="groups")
# Provider group -> our role, "group:Role" comma-separated; roles: Viewer,
# Customer success, Data engineer, Superuser. A person in no mapped group is refused.
OIDC_GROUP_ROLES = env.str("OIDC_GROUP_ROLES", default="")
# On: an ID token whose amr shows no second factor is refused, and the
# provider's multi-factor stands in for our one-time code. Off: our TOTP step
# still follows the provider's sign-in.
OIDC_REQUIRE_MFA = env.bool("OIDC_REQUIRE_MFA", default=False)
# amr values (RFC 8176) that show a second factor.
OIDC_MFA_AMR_VALUES = env.list(
    "OIDC_MFA_AMR_VALUES", default=["mfa", "otp", "hwk", "sc", "sms", "tel", "fpt", "face", "iris", "retina"]
)
# An SSO session ends this long after sign-in however active (the password
# sessions' 12 hours do not apply to it).
OIDC_SESSION_HOURS = env.int("OIDC_SESSION_HOURS", default=8)
# Every few minutes a session asks the provider again (refresh token, or
# userinfo): a person disabled there is signed out here within this interval.
OIDC_REVALIDATE_MINUTES = env.int("OIDC_REVALIDATE_MINUTES", default=5)
# A person not seen at the provider for this many days is deactivated here (daily job, audited).
OIDC_DEACTIVATE_AFTER_DAYS = env.int("OIDC_DEACTIVATE_AFTER_DAYS", default=30)
# Seconds the provider is waited for (discovery, token, JWKS, userinfo).
OIDC_TIMEOUT_SECONDS = env.float("OIDC_TIMEOUT_SECONDS", default=10.0)

# ---------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------
# Every handler masks anything that looks like a secret, a Client ID, a Fernet
# token or an Authorization header (edpotential/logging.py): the second net
# under code that never logs them. Django's own loggers are redefined here so
# none keeps an unfiltered default handler.
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "mask_secrets": {"()": "edpotential.logging.SecretMaskingFilter"},
        "require_debug_false": {"()": "django.utils.log.RequireDebugFalse"},
    },
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["mask_secrets"]},
        "mail_admins": {
            "class": "edpotential.logging.MaskingAdminEmailHandler",
            "level": "ERROR",
            "filters": ["require_debug_false", "mask_secrets"],
        },
    },
    # Everything propagates to the root's two filtered handlers.
    "root": {"handlers": ["console", "mail_admins"], "level": LOG_LEVEL},
    "loggers": {
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.server": {"handlers": [], "level": "INFO", "propagate": True},
        # Sign-ins are audit events (AuditEvent login/login_failed); axes'
        # own INFO lines would only repeat them. Lockouts still show (WARNING).
        "axes": {"handlers": [], "level": "WARNING", "propagate": True},
        # apprise says "Sent ... notification" per chat message; the notice records that already.
        "apprise": {"handlers": [], "level": "WARNING", "propagate": True},
    },
}
# Error reports (the 500 mail, the debug page) hide key, password and token
# fields even where a view forgot @sensitive_post_parameters, and the password
# in every URL among the settings and request.META (CELERY_BROKER_URL, the
# cache LOCATION, EMAIL_URL in a runserver environment ...).
DEFAULT_EXCEPTION_REPORTER_FILTER = "edpotential.logging.SecretSafeExceptionReporterFilter"
