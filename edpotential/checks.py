"""`manage.py check --deploy`: the development stand-ins that must never reach production, each named.

The settings already refuse to load with DEBUG off when a production
variable is missing (settings.PRODUCTION_REQUIRED); these checks catch one
that is set, but to a stand-in: console or in-memory mail (nothing is
delivered), SQLite (one file, no concurrent writers), a folder or in-memory
Celery broker (tasks never leave the process or the host), a dummy or
in-memory cache (every process counts its own rate limits, or none), a
SITE_URL without a host (every link mailed would be broken), and a CD2
gateway over plain HTTP (Secrets would travel as Basic auth in clear).
Registered in SecurityConfig.ready (edpotential/apps.py).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.core import checks

MAIL_STAND_INS = {
    "django.core.mail.backends.console.EmailBackend": "console",
    "django.core.mail.backends.locmem.EmailBackend": "in-memory (locmem)",
    "django.core.mail.backends.filebased.EmailBackend": "file",
    "django.core.mail.backends.dummy.EmailBackend": "dummy",
}
CACHE_STAND_INS = {
    "django.core.cache.backends.dummy.DummyCache": "dummy",
    "django.core.cache.backends.locmem.LocMemCache": "in-memory (locmem)",
}
BROKER_STAND_INS = {"filesystem": "a folder (filesystem://)", "memory": "in-memory (memory://)"}


@checks.register(checks.Tags.security, deploy=True)
def check_no_development_stand_ins(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    return development_stand_ins(
        email_backend=settings.EMAIL_BACKEND,
        databases=settings.DATABASES,
        broker_url=settings.CELERY_BROKER_URL,
        caches=settings.CACHES,
        site_url=settings.SITE_URL,
        cd2_api_url=settings.CD2_API_URL,
    )


def development_stand_ins(
    *, email_backend: str, databases: dict, broker_url: str, caches: dict, site_url: str, cd2_api_url: str
) -> list[checks.CheckMessage]:
    """An Error per stand-in found in these settings, naming the variable that sets it."""
    errors = []
    if email_backend in MAIL_STAND_INS:
        errors.append(
            checks.Error(
                f"EMAIL_URL gives the {MAIL_STAND_INS[email_backend]} mail backend ({email_backend}): "
                "no mail would be delivered.",
                hint="Set EMAIL_URL to the mail server, e.g. smtp+tls://user:password@smtp.example.com:587.",
                id="edpotential.E001",
            )
        )
    for alias, database in databases.items():
        if database["ENGINE"] == "django.db.backends.sqlite3":
            errors.append(
                checks.Error(
                    f"DATABASE_URL gives SQLite for the {alias!r} database: one file, one writer at a time.",
                    hint="Set DATABASE_URL to PostgreSQL, e.g. postgres://user:password@db.example.com:5432/registry.",
                    id="edpotential.E002",
                )
            )
    scheme = urlsplit(broker_url).scheme.split("+")[0]
    if scheme in BROKER_STAND_INS:
        errors.append(
            checks.Error(
                f"CELERY_BROKER_URL gives {BROKER_STAND_INS[scheme]} as the Celery broker: tasks would not reach "
                "the workers on other hosts.",
                hint="Set CELERY_BROKER_URL to Redis, e.g. redis://redis.example.com:6379/0.",
                id="edpotential.E003",
            )
        )
    for alias, cache in caches.items():
        if cache["BACKEND"] in CACHE_STAND_INS:
            errors.append(
                checks.Error(
                    f"CACHE_URL gives the {CACHE_STAND_INS[cache['BACKEND']]} cache for {alias!r}: every process "
                    "would count its own rate limits (or none).",
                    hint="Set CACHE_URL to Redis, e.g. rediscache://redis.example.com:6379/1.",
                    id="edpotential.E004",
                )
            )
    site = urlsplit(site_url)
    if site.scheme != "https" or not site.hostname:
        errors.append(
            checks.Error(
                f"SITE_URL ({site_url!r}) is not an https:// address with a host: links in mails would not work.",
                hint="Set SITE_URL to the site's public address, e.g. https://registry.example.com.",
                id="edpotential.E005",
            )
        )
    gateway = urlsplit(cd2_api_url)
    if gateway.scheme != "https" or not gateway.hostname:
        errors.append(
            checks.Error(
                f"CD2_API_URL ({cd2_api_url!r}) is not an https:// address: customers' Secrets would "
                "travel to it in clear (Basic auth).",
                hint="Leave CD2_API_URL unset (https://api-gateway.instructure.com) or give an https:// address.",
                id="edpotential.E006",
            )
        )
    return errors
