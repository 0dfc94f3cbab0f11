"""The masking net by shape: URLs with passwords, lower-case and dashed names, "secret <value>".

Every value planted here is lower-case words and dashes, which the
"long random run" heuristic of edpotential/logging.py does not catch: only
the shape-specific rules under test can mask them.
"""

from __future__ import annotations

import logging
import sys

import pytest
from django.core import mail
from django.test import RequestFactory

from edpotential.logging import MASK, MaskingAdminEmailHandler, SecretSafeExceptionReporterFilter, mask_secrets

PLAIN = "plain-lowercase-value"  # a password nobody generated: no heuristic would call it random


@pytest.mark.parametrize(
    "text",
    [
        f"redis://:{PLAIN}@redis.internal:6379/0",
        f"rediss://default:{PLAIN}@redis.internal:6380/1",
        f"rediscache://:{PLAIN}@127.0.0.1:6379/12",
        f"postgres://registry:{PLAIN}@db.internal:5432/registry",
        f"smtp+tls://mailer:{PLAIN}@smtp.example.com:587",
        f"Cannot connect to redis://:{PLAIN}@redis.internal:6379/0: Connection refused.",
        f"client-secret: {PLAIN}",
        f"client_secret={PLAIN}",
        f"X-Client-Secret: {PLAIN}",
        f"{{'client-secret': '{PLAIN}'}}",
        f"SECRET_KEY={PLAIN}",
        f"secret_key => {PLAIN}",
        f"Secret: {PLAIN}",
        f"secret {PLAIN}",
        f"checking secret {PLAIN} for key 12",
        f"access_token={PLAIN}",
        f"x-api-key: {PLAIN}",
        f"db_password {PLAIN}",
        # A URL's query string, fragment or lone user name (a webhook receiver's own token), whatever its name.
        f"https://hooks.example.com/cd2?sig={PLAIN}",
        f"https://hooks.example.com/cd2?a=1&k={PLAIN}#x",
        f"https://hooks.example.com/cd2#{PLAIN}",
        f"https://{PLAIN}@hooks.example.com/cd2",
        f"Max retries exceeded with url: /cd2?sig={PLAIN} (Caused by NewConnectionError)",
    ],
)
def test_each_shape_of_a_secret_is_masked(text):
    masked = mask_secrets(text)
    assert PLAIN not in masked
    assert MASK in masked


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (f"redis://:{PLAIN}@redis.internal:6379/0", "redis://:[masked]@redis.internal:6379/0"),
        (f"postgres://registry:{PLAIN}@db/registry", "postgres://registry:[masked]@db/registry"),
        (f"client-secret: {PLAIN}, then", "client-secret: [masked], then"),
        (
            f"POST https://hooks.example.com:8443/cd2?sig={PLAIN} failed",
            "POST https://hooks.example.com:8443/cd2?[masked] failed",
        ),
    ],
)
def test_only_the_secret_part_is_masked_so_the_line_stays_useful(text, kept):
    assert mask_secrets(text) == kept


@pytest.mark.parametrize(
    "text",
    [
        "redis://127.0.0.1:6379/0",
        "https://registry.example.com/admin/login/",
        "the secret was rejected by CD2",
        "Forbidden (CSRF token missing.): /admin/login/",
        "Token bucket empty, waiting 2 s",
        "password reset mail sent to ada@northfield.example.edu",
    ],
)
def test_lines_without_a_secret_are_left_alone(text):
    assert mask_secrets(text) == text


# ---------------------------------------------------------------------------
# Django's error report: settings and request.META
# ---------------------------------------------------------------------------


@pytest.fixture
def settings_with_url_passwords(settings):
    settings.CELERY_BROKER_URL = f"redis://:{PLAIN}@redis.internal:6379/0"
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": f"redis://:{PLAIN}@redis.internal:6379/1",
        },
        "replicas": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": [f"redis://:{PLAIN}@replica-a:6379/1", f"redis://:{PLAIN}@replica-b:6379/1"],
        },
    }
    settings.EMAIL_URL = f"smtp+tls://mailer:{PLAIN}@smtp.example.com:587"
    return settings


def test_the_error_report_hides_url_passwords_in_every_setting(settings_with_url_passwords):
    shown = SecretSafeExceptionReporterFilter().get_safe_settings()
    text = repr(shown)
    assert PLAIN not in text
    assert shown["CELERY_BROKER_URL"] == "redis://:********************@redis.internal:6379/0"
    assert shown["CACHES"]["default"]["LOCATION"].endswith("@redis.internal:6379/1")
    assert shown["CACHES"]["replicas"]["LOCATION"][1].endswith("@replica-b:6379/1")
    assert shown["EMAIL_URL"].startswith("smtp+tls://mailer:****")


def test_the_error_report_hides_url_passwords_in_request_meta():
    # runserver copies the environment into request.META.
    request = RequestFactory().get(
        "/", DATABASE_URL=f"postgres://registry:{PLAIN}@db/registry", EMAIL_URL=f"smtp://u:{PLAIN}@smtp:25"
    )
    meta = SecretSafeExceptionReporterFilter().get_safe_request_meta(request)
    assert PLAIN not in repr(meta)
    assert meta["DATABASE_URL"].endswith("@db/registry")


def test_the_error_mail_carries_no_url_password_in_subject_or_bodies(settings_with_url_passwords):
    settings_with_url_passwords.ADMINS = [("Ops", "ops@example.com")]
    request = RequestFactory().get("/", CACHE_URL=f"rediscache://:{PLAIN}@redis.internal:6379/12")
    try:
        raise ConnectionError(f"Error connecting to redis://:{PLAIN}@redis.internal:6379/0")
    except ConnectionError:
        record = logging.getLogger("tests.security.shapes").makeRecord(
            "tests.security.shapes", logging.ERROR, __file__, 1, "Broker down", (), sys.exc_info()
        )
    record.request = request
    MaskingAdminEmailHandler(include_html=True).emit(record)
    (sent,) = mail.outbox
    html = "".join(str(body) for body, _ in sent.alternatives)
    assert "CELERY_BROKER_URL" in sent.body  # the settings are in the report, masked
    for part in (sent.subject, sent.body, html):
        assert PLAIN not in part
