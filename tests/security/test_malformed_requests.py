"""Malformed requests get a 400 with the usual security headers, never a 500 or a traceback.

Non-UTF-8 charsets (edpotential.security.MalformedRequestMiddleware), NUL in
a query string, and X-Forwarded-For entries that are not bare addresses
(requestinfo.client_ip) behind the trusted proxy.
"""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client, RequestFactory
from django.urls import reverse
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from credentials.models import AuditEvent, CD2Credential, Notice, SubmissionLink
from credentials.services import outbox
from credentials.services.links import submission_link_create
from institutions.models import Contact
from requestinfo import client_ip
from tests.conftest import PLANTED_CLIENT_ID, PLANTED_SECRET

PASSWORD = "correct horse battery staple 42"


def assert_security_headers(response) -> None:
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"]
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    assert "default-src 'self'" in response["Content-Security-Policy"]


@pytest.fixture
def link(institution):
    return submission_link_create(institution=institution)


@pytest.fixture
def form_urls(link) -> dict[str, str]:
    return {
        "sign-in": "/admin/login/",
        "submission": reverse("credentials:submit", kwargs={"token": link.token}),
        "lost link": reverse("credentials:request_link"),
    }


def csrf_client(url: str) -> tuple[Client, str]:
    """A client that enforces CSRF as browsers meet it, with a valid token for `url`'s form."""
    from django.conf import settings

    client = Client(enforce_csrf_checks=True, raise_request_exception=False)
    assert client.get(url).status_code == 200
    return client, client.cookies[settings.CSRF_COOKIE_NAME].value


BODY = "email=ada%40northfield.example.edu&username=ops&password=x"
MULTIPART = (
    '--b0undary\r\nContent-Disposition: form-data; name="email"\r\n\r\nada@northfield.example.edu\r\n--b0undary--\r\n'
)
MALFORMED_BODIES = {
    "urlencoded utf-16": ("application/x-www-form-urlencoded; charset=utf-16", BODY.encode("utf-16")),
    "urlencoded bogus": ("application/x-www-form-urlencoded; charset=bogus", BODY.encode()),
    "urlencoded latin-1": ("application/x-www-form-urlencoded; charset=iso-8859-1", BODY.encode("latin-1")),
    "multipart utf-16": ("multipart/form-data; charset=utf-16; boundary=b0undary", MULTIPART.encode()),
}


# DEBUG on too: there Django's own 400 for a UTF-16 form re-reads the body
# to build its debug page and fails with a bare 500.
@pytest.mark.parametrize("debug", [False, True], ids=["debug-off", "debug-on"])
@pytest.mark.parametrize("shape", MALFORMED_BODIES)
@pytest.mark.parametrize("form", ["sign-in", "submission", "lost link"])
def test_a_post_in_a_charset_other_than_utf8_gets_a_400_with_security_headers(
    form_urls, link, form, shape, debug, settings, caplog
):
    url = form_urls[form]
    client, token = csrf_client(url)
    settings.DEBUG = debug
    content_type, body = MALFORMED_BODIES[shape]

    response = client.generic("POST", url, body, content_type=content_type, headers={"X-CSRFToken": token})

    assert response.status_code == 400
    assert_security_headers(response)
    page = response.content.decode()
    assert "Traceback" not in page and link.token not in page
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert any("refused (400): a charset other than UTF-8" in r.getMessage() for r in caplog.records)
    assert all(link.token not in r.getMessage() for r in caplog.records)
    assert mail.outbox == []
    assert not SubmissionLink.objects.filter(reason="request").exists()


@pytest.mark.parametrize("charset", ["UTF-8", "utf8", "utf-8"])
def test_a_utf8_charset_in_any_spelling_is_accepted(
    form_urls, charset, celery_messages, django_capture_on_commit_callbacks
):
    url = form_urls["lost link"]
    client, token = csrf_client(url)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.generic(
            "POST",
            url,
            BODY,
            content_type=f"application/x-www-form-urlencoded; charset={charset}",
            headers={"X-CSRFToken": token},
        )
    assert response.status_code == 302
    assert [m["task"] for m in celery_messages] == ["credentials.tasks.deliver_notice"]
    assert Notice.objects.filter(kind=Notice.Kind.LINK_REQUEST).count() == 1


@pytest.mark.parametrize("query", ["next=%00", "a=b%00c", "%00=1", "x=\x00"])
@pytest.mark.parametrize("form", ["sign-in", "submission", "lost link"])
def test_a_nul_in_the_query_string_gets_a_400_with_security_headers(form_urls, link, form, query, caplog):
    response = Client(raise_request_exception=False).get(form_urls[form], QUERY_STRING=query)
    assert response.status_code == 400
    assert_security_headers(response)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert mail.outbox == []


def test_a_nul_in_an_admin_search_gets_a_400_not_a_database_error(admin_client, caplog):
    # PostgreSQL refuses NUL in text: without the check this search is a 500 there.
    url = reverse("admin:credentials_cd2credential_changelist")
    response = admin_client.get(url, QUERY_STRING="q=%00")
    assert response.status_code == 400
    assert_security_headers(response)
    assert admin_client.get(url, QUERY_STRING="q=%2500").status_code == 200  # the text "%00" is fine


# ---------------------------------------------------------------------------
# X-Forwarded-For behind the trusted proxy
# ---------------------------------------------------------------------------

REMOTE = "10.0.0.2"  # the proxy itself, as the application sees it


@pytest.mark.parametrize(
    ("forwarded", "expected"),
    [
        ("198.51.100.4", "198.51.100.4"),
        ("6.6.6.6, 198.51.100.4", "198.51.100.4"),  # only the entry our proxy appended
        ("198.51.100.4:5678", "198.51.100.4"),
        ("6.6.6.6,198.51.100.4:443", "198.51.100.4"),
        ("[::1]:80", "::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:DB8:0::1", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("garbage, 198.51.100.4", "198.51.100.4"),
        # The proxy's entry is not an address: never fall back to the client's own entries.
        ("6.6.6.6, garbage", REMOTE),
        ("6.6.6.6, unknown", REMOTE),
        ("6.6.6.6, ", REMOTE),
        ("198.51.100.4:5678:9", REMOTE),
        ("[::1", REMOTE),
        ("1.2.3.4.5", REMOTE),
        ("", REMOTE),
        ("\x00, ;drop table", REMOTE),
    ],
)
def test_behind_the_proxy_the_last_entry_is_read_without_its_port_and_garbage_is_ignored(settings, forwarded, expected):
    settings.BEHIND_TRUSTED_PROXY = True
    request = RequestFactory().get("/", REMOTE_ADDR=REMOTE, HTTP_X_FORWARDED_FOR=forwarded)
    assert client_ip(request) == expected


@pytest.mark.parametrize("proxy", [False, True])
@pytest.mark.parametrize("remote", ["", "garbage", "unix:/run/gunicorn.sock"])
def test_an_unusable_connection_address_gives_none(settings, proxy, remote):
    settings.BEHIND_TRUSTED_PROXY = proxy
    request = RequestFactory().get("/", REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR="garbage")
    assert client_ip(request) is None


@pytest.fixture
def behind_proxy(settings):
    settings.BEHIND_TRUSTED_PROXY = True


@pytest.fixture
def staff(db):
    user = get_user_model().objects.create_superuser("ops", "ops@example.com", PASSWORD)
    TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    return user


def code_for(user) -> str:
    device = TOTPDevice.objects.get(user=user)
    return f"{TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift).token():06d}"


@pytest.mark.parametrize(("forwarded", "stored"), [("203.0.113.9:5678", "203.0.113.9"), ("6.6.6.6, bogus", REMOTE)])
def test_sign_in_with_an_odd_forwarded_entry_works_and_audits_a_valid_address(behind_proxy, staff, forwarded, stored):
    client = Client(raise_request_exception=False)
    headers = {"REMOTE_ADDR": REMOTE, "HTTP_X_FORWARDED_FOR": forwarded}
    failed = client.post("/admin/login/", {"username": "ops", "password": "wrong", "otp_token": ""}, **headers)
    assert failed.status_code == 200
    signed_in = client.post(
        "/admin/login/", {"username": "ops", "password": PASSWORD, "otp_token": code_for(staff)}, **headers
    )
    assert signed_in.status_code == 302
    events = AuditEvent.objects.filter(kind__in=[AuditEvent.Kind.LOGIN_FAILED, AuditEvent.Kind.LOGIN])
    assert sorted(events.values_list("kind", "ip_address")) == [("login", stored), ("login_failed", stored)]


def test_a_submission_with_an_odd_forwarded_entry_is_stored_with_a_valid_address(
    behind_proxy, link, cd2_gateway, django_capture_on_commit_callbacks
):
    form = {
        "client_id": PLANTED_CLIENT_ID,
        "secret": PLANTED_SECRET,
        "expiry_period": "",
        "expires_on": (dt.date.today() + dt.timedelta(days=365)).isoformat(),
        "submitted_by": "Ada Admin",
        "submitted_by_email": "ada@northfield.example.edu",
    }
    url = reverse("credentials:submit", kwargs={"token": link.token})
    with django_capture_on_commit_callbacks(execute=True):
        response = Client(raise_request_exception=False).post(
            url, form, REMOTE_ADDR=REMOTE, HTTP_X_FORWARDED_FOR="[2001:db8::7]:443"
        )
    assert response.status_code == 302, response.content.decode()[:3000]
    assert CD2Credential.objects.count() == 1
    event = AuditEvent.objects.get(kind=AuditEvent.Kind.SUBMISSION)
    assert event.ip_address == "2001:db8::7"


def test_the_lost_link_request_gets_a_valid_address_and_records_it(
    behind_proxy, institution, celery_messages, django_capture_on_commit_callbacks
):
    Contact.objects.filter(institution=institution).update(email="ada@northfield.example.edu")
    with django_capture_on_commit_callbacks(execute=True):
        response = Client(raise_request_exception=False).post(
            reverse("credentials:request_link"),
            {"email": "ada@northfield.example.edu"},
            REMOTE_ADDR=REMOTE,
            HTTP_X_FORWARDED_FOR="198.51.100.7:5678",
        )
    assert response.status_code == 302
    request = Notice.objects.get(kind=Notice.Kind.LINK_REQUEST)
    assert request.payload == {"email": "ada@northfield.example.edu", "ip_address": "198.51.100.7"}

    outbox.outbox_deliver_due()  # what the workers run: the request, then the link it wrote
    outbox.outbox_deliver_due()

    event = AuditEvent.objects.get(kind=AuditEvent.Kind.LINK_CREATED)
    assert event.ip_address == "198.51.100.7"
    assert len(mail.outbox) == 1
