"""The logging net: secrets, Client IDs, Fernet tokens and Authorization headers are masked everywhere."""

from __future__ import annotations

import base64
import logging

import pytest
from cryptography.fernet import Fernet
from django.conf import settings
from django.core import mail
from django.test import RequestFactory

from edpotential.logging import (
    MASK,
    MaskingAdminEmailHandler,
    SecretMaskingFilter,
    SecretSafeExceptionReporterFilter,
    mask_secrets,
)
from tests.conftest import PLANTED_SECRET

CLIENT_ID = "us-east-1#0a1b2c3d-4e5f-6789-abcd-ef0123456789"
BASIC = base64.b64encode(f"{CLIENT_ID}:{PLANTED_SECRET}".encode()).decode()


@pytest.mark.parametrize(
    "text",
    [
        f"checking key {PLANTED_SECRET}",
        f"secret={PLANTED_SECRET}",
        f"{{'secret': 'short-one'}} and {PLANTED_SECRET}",
        f"Authorization: Basic {BASIC}",
        f"headers={{'Authorization': 'Bearer eyJhbGciOi.eyJzdWIiOiIx.c2lnbmF0dXJl'}} {BASIC}",
        f"stored {Fernet(Fernet.generate_key()).encrypt(b'x').decode()}",
        f"client {CLIENT_ID} rejected",
        f"DAP_CLIENT_SECRET={PLANTED_SECRET}",
        f'{{"password": "{PLANTED_SECRET}"}}',
    ],
)
def test_mask_secrets_hides_every_kind_of_credential(text):
    masked = mask_secrets(text)
    for leaked in (PLANTED_SECRET, BASIC, "short-one", "eyJhbGciOi", "gAAAAA", "0a1b2c3d-4e5f-6789-abcd-ef01234"):
        assert leaked not in masked
    assert MASK in masked or "#…" in masked


def test_mask_secrets_keeps_ordinary_log_lines_readable():
    for text in [
        "Reminder 30 days before expiry sent to ada@northfield.example.edu for key us-east-1 …6789",
        "Task credentials.tasks.send_expiry_reminders[3f2a9c1e-8d4b-4f6a-9e1d-0c2b7a5e4d3f] succeeded",
        "GET /admin/credentials/cd2credential/?status=active HTTP/1.1 200",
        "verification: rejected (401 AuthenticationError)",
    ]:
        assert mask_secrets(text) == text


def test_the_region_and_last_four_characters_of_a_client_id_stay_for_debugging():
    assert mask_secrets(f"key {CLIENT_ID}") == "key us-east-1#…6789"


# A real token (secrets.token_urlsafe(32)) with no digit: about one in 1,500
# looks like this, and the "random-looking run" heuristic lets it through.
DIGITLESS_TOKEN = "kQwErTyUiOpAsDfGhJkLzXcVbNm-_qWeRtYuIoPaSdF"


@pytest.mark.parametrize(
    "text",
    [
        f"GET /k/{DIGITLESS_TOKEN}/ HTTP/1.1",
        f"Not Found: /k/{DIGITLESS_TOKEN}/",
        f'"https://registry.example.com/k/{DIGITLESS_TOKEN}/" "Mozilla/5.0"',
        f"POST /k/{DIGITLESS_TOKEN}?x=1",
        "GET /k/SOMETOKEN123/ HTTP/1.1",
    ],
)
def test_a_submission_link_token_is_masked_whatever_its_characters(text):
    masked = mask_secrets(text)
    assert DIGITLESS_TOKEN not in masked and "SOMETOKEN123" not in masked
    assert f"/k/{MASK}" in masked


def test_the_received_page_after_a_submission_stays_readable():
    assert mask_secrets("GET /k/received/ HTTP/1.1") == "GET /k/received/ HTTP/1.1"


def log_through(handler, msg, *args, **kwargs) -> logging.LogRecord:
    logger = logging.getLogger("tests.security.masking")
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    keep = Keep()
    keep.addFilter(SecretMaskingFilter())
    logger.addHandler(keep)
    try:
        logger.error(msg, *args, **kwargs)
    finally:
        logger.removeHandler(keep)
    return records[0]


def test_the_filter_masks_arguments_and_tracebacks_not_just_the_message():
    try:
        raise ValueError(f"bad secret {PLANTED_SECRET}")
    except ValueError:
        record = log_through(None, "checking %s with %r", CLIENT_ID, {"secret": PLANTED_SECRET}, exc_info=True)
    text = logging.Formatter("%(message)s").format(record)
    assert PLANTED_SECRET not in text and CLIENT_ID not in text
    assert "ValueError" in text  # the traceback is kept, only masked


def test_every_handler_in_logging_settings_has_the_filter():
    handlers = settings.LOGGING["handlers"]
    assert handlers and all("mask_secrets" in h.get("filters", []) for h in handlers.values())
    configured = [h for h in logging.getLogger().handlers if h.__class__.__module__ != "_pytest.logging"]
    assert configured and all(any(isinstance(f, SecretMaskingFilter) for f in h.filters) for h in configured)
    assert not logging.getLogger("django").handlers  # no unfiltered Django default left behind


def test_the_error_mail_masks_secrets_in_subject_and_bodies(settings):
    settings.ADMINS = [("Ops", "ops@example.com")]
    handler = MaskingAdminEmailHandler(include_html=True)
    request = RequestFactory().post("/submit/x/", {"secret": PLANTED_SECRET, "client_id": CLIENT_ID})
    try:
        raise RuntimeError(f"gateway said no to {PLANTED_SECRET}")
    except RuntimeError:
        record = log_through(None, "Internal Server Error: %s", PLANTED_SECRET, exc_info=True)
    record.request = request
    handler.emit(record)
    sent = mail.outbox[-1]
    bodies = sent.subject + sent.body + "".join(str(a[0]) for a in sent.alternatives)
    assert PLANTED_SECRET not in bodies and CLIENT_ID not in bodies and BASIC not in bodies


def test_error_reports_hide_key_fields_even_without_sensitive_post_parameters():
    request = RequestFactory().post("/x/", {"secret": PLANTED_SECRET, "client_id": CLIENT_ID, "name": "Ada"})
    params = SecretSafeExceptionReporterFilter().get_post_parameters(request)
    assert PLANTED_SECRET not in str(params) and CLIENT_ID not in str(params)
    assert params["name"] == "Ada"
