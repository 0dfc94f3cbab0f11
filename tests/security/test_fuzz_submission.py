"""Fuzzing the public submission page through Django's test client.

Whatever is posted (arbitrary unicode, control characters, huge values,
missing or repeated fields, files where text belongs, malformed, expired and
replayed tokens): no 5xx, no row stored from invalid input, and no partial
rows (a stored key always comes with its used-up link and its audit events).
"""

from __future__ import annotations

import datetime as dt
from urllib.parse import quote

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from hypothesis import event, given
from hypothesis import strategies as st

from credentials.models import AuditEvent, CD2Credential, SubmissionLink
from credentials.services.links import submission_link_create
from credentials.validators import validate_key_input
from devtools.fake_gateway import DEMO_ACCEPTED_CLIENT_ID, DEMO_ACCEPTED_SECRET, FakeGateway
from tests.conftest import accepted_submission

pytestmark = pytest.mark.django_db

FIELDS = ("client_id", "secret", "expiry_period", "expires_on", "submitted_by", "submitted_by_email")

junk_text = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zs", "Zl", "So"]), max_size=40),
    st.integers(500, 30000).map(lambda n: "é\x00\u202e" * n),  # huge, sometimes over the 16 KB body limit
    st.sampled_from(["", " ", "\x00", "null", "[]", "{}", "0", "-1", "1e309", "NaN", "<script>", "' OR 1=1 --"]),
)
good_values = {
    "client_id": st.just(DEMO_ACCEPTED_CLIENT_ID),
    "secret": st.just(DEMO_ACCEPTED_SECRET),
    "expiry_period": st.sampled_from(["", "1y", "6m", "bogus"]),
    "expires_on": st.sampled_from(["2027-06-30", "", "2020-01-01", "2099-01-01", "31/12/2027", "2027-02-30"]),
    "submitted_by": st.sampled_from(["Ada Admin", ""]),
    "submitted_by_email": st.sampled_from(["ada@northfield.example.edu", "not-an-email", ""]),
}


@st.composite
def submissions(draw):
    data = accepted_submission()
    # Mostly a near-valid form with a few fields spoiled, sometimes all of them.
    spoiled = draw(st.sets(st.sampled_from(FIELDS), max_size=len(FIELDS)))
    for name in spoiled:
        choice = draw(st.sampled_from(["good", "junk", "missing", "list", "file"]))
        if choice == "good":
            data[name] = draw(good_values[name])
        elif choice == "missing":
            data.pop(name, None)
        elif choice == "junk":
            data[name] = draw(junk_text)
        elif choice == "list":
            data[name] = draw(st.lists(st.one_of(good_values[name], junk_text), min_size=2, max_size=3))
        else:
            data[name] = SimpleUploadedFile("key.txt", draw(st.binary(max_size=300)))
    token_kind = draw(st.sampled_from(["fresh", "fresh", "fresh", "malformed", "expired", "replayed"]))
    malformed = draw(st.one_of(st.text(min_size=1, max_size=300), st.just("a" * 43), st.just("../../admin")))
    return data, token_kind, malformed


@pytest.fixture
def gateway(settings):
    with FakeGateway() as running:
        settings.CD2_API_URL = running.url
        settings.CD2_READ_TIMEOUT = 5
        settings.RATELIMIT_ENABLE = False  # the fuzzing is of the form, not of the rate limiter
        settings.CELERY_TASK_ALWAYS_EAGER = False
        yield running


def rows() -> tuple[int, int, int]:
    return (
        CD2Credential.objects.count(),
        SubmissionLink.objects.filter(used_at__isnull=False).count(),
        AuditEvent.objects.filter(kind=AuditEvent.Kind.LINK_USED).count(),
    )


def only_value(value):
    return value[-1] if isinstance(value, list) and value else value


@given(case=submissions())
def test_no_input_gives_a_server_error_or_stores_anything_it_should_not(gateway, institution, case):
    data, token_kind, malformed = case
    client = Client(raise_request_exception=False)
    link = submission_link_create(institution=institution)
    token = link.token
    if token_kind == "malformed":
        token = malformed
    elif token_kind == "expired":
        SubmissionLink.objects.filter(pk=link.link.pk).update(expires_at=link.link.created_at - dt.timedelta(days=1))
    elif token_kind == "replayed":
        SubmissionLink.objects.filter(pk=link.link.pk).update(used_at=link.link.created_at)

    before = rows()
    response = client.post(f"/k/{quote(token, safe='')}/", data)
    after = rows()

    assert response.status_code < 500, response.content[:500]
    stored = after[0] - before[0]
    # No partial rows: a key, its used-up link and its "link used" event come together or not at all.
    assert after[0] - before[0] == after[1] - before[1] == after[2] - before[2]
    assert stored in (0, 1)
    event(f"status {response.status_code}, stored {stored}")
    if stored:
        assert token_kind == "fresh"
        credential = CD2Credential.objects.order_by("-pk").first()
        # Only valid input is stored, exactly as given.
        validate_key_input(
            client_id=credential.client_id,
            secret=credential.secret,
            expires_on=credential.expires_on,
            today=credential.submitted_at.date(),
        )
        assert credential.client_id == str(only_value(data.get("client_id"))).strip()
        assert credential.secret == str(only_value(data.get("secret")))
    else:
        # A link that stored nothing is not used up.
        link.link.refresh_from_db()
        if token_kind in ("fresh", "malformed", "expired"):
            assert link.link.used_at is None


@given(case=submissions())
def test_a_replayed_successful_submission_stores_nothing_more(gateway, institution, case):
    data, _, _ = case
    # Examples share the database, and a key is stored once ever: start each
    # one with no key on file, so the first post stores a valid form.
    CD2Credential.objects.all().delete()
    client = Client(raise_request_exception=False)
    link = submission_link_create(institution=institution)
    first = client.post(f"/k/{link.token}/", accepted_submission())
    assert first.status_code == 302
    before = rows()
    replay = client.post(f"/k/{link.token}/", data)
    assert replay.status_code in (404, 413)  # used up, or refused for size before anything is read
    assert rows() == before
