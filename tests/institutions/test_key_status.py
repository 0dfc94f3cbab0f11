from __future__ import annotations

import datetime as dt

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from credentials.models import CD2Credential
from credentials.selectors import ExpiryState, institutions_with_key_status
from credentials.services.keys import credential_set_status
from institutions.models import KeyState

pytestmark = pytest.mark.django_db


def status_of(institution, today):
    return institutions_with_key_status(today=today).get(pk=institution.pk)


@pytest.mark.parametrize(
    ("days", "state"),
    [
        (400, ExpiryState.OK),
        (31, ExpiryState.OK),
        (30, ExpiryState.EXPIRING),
        (0, ExpiryState.EXPIRING),
        (-1, ExpiryState.EXPIRED),
    ],
)
def test_expiry_state_and_days_left_come_from_the_database(institution, make_credential, today, days, state):
    make_credential(institution, days=400)
    row = status_of(institution, today + dt.timedelta(days=400 - days))
    assert (row.days_left, row.expiry_state, row.key_state) == (days, state, state)


def test_an_institution_without_a_key_is_missing(institution):
    row = status_of(institution, dt.date.today())
    assert (row.expiry_state, row.key_state, row.days_left, row.active_hint) == ("missing", "missing", None, None)


def test_a_failed_check_and_a_pending_key_are_told_apart_from_missing(institution, make_credential, today):
    credential = make_credential(institution)
    credential_set_status(credential=credential, status=CD2Credential.Status.INVALID, reason="401")
    assert status_of(institution, today).key_state == KeyState.FAILING
    make_credential(institution, status=CD2Credential.Status.PENDING_VERIFICATION)
    assert status_of(institution, today).key_state == KeyState.PENDING


def test_a_newer_pending_key_wins_over_the_active_ones_expiry_which_staff_still_see(
    institution, make_credential, today
):
    make_credential(institution, days=10)
    pending = make_credential(institution, status=CD2Credential.Status.PENDING_VERIFICATION)
    row = status_of(institution, today)
    assert (row.key_state, row.days_left) == (KeyState.PENDING, 10)
    assert (row.pending_key_id, row.pending_hint) == (pending.pk, pending.hint)


def test_an_older_pending_key_does_not_hide_a_newer_active_one(institution, make_credential, today):
    pending = make_credential(institution, status=CD2Credential.Status.PENDING_VERIFICATION)
    make_credential(institution, days=10)
    CD2Credential.objects.filter(pk=pending.pk).update(submitted_at=pending.submitted_at - dt.timedelta(days=1))
    row = status_of(institution, today)
    assert (row.key_state, row.pending_key_id) == (KeyState.EXPIRING, None)


def test_credential_annotations_match_the_model_method(institution, make_credential, today):
    credential = make_credential(institution, days=45)
    row = CD2Credential.objects.with_expiry(today=today).get(pk=credential.pk)
    assert row.days_left == credential.days_left(today) == 45
    assert row.expiry_state == ExpiryState.OK


def test_the_status_query_is_one_query_whatever_the_number_of_institutions(make_institution, make_credential, today):
    def count_queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            rows = list(institutions_with_key_status(today=today))
        assert rows
        return len(ctx.captured_queries)

    make_credential(make_institution())
    few = count_queries()
    for n in range(30):
        make_credential(make_institution(), days=n - 5)
    assert count_queries() == few == 1


@pytest.mark.parametrize("domain", ["school.instructure.com", "canvas.school.edu", "a-b.c.d.ac.uk"])
def test_good_canvas_domains_pass(make_institution, domain):
    make_institution(canvas_domain=domain).full_clean()


@pytest.mark.parametrize(
    "domain",
    [
        "https://school.instructure.com",
        "school.instructure.com/login",
        "school",
        "sch ool.edu",
        "school.instructure.com:443",
    ],
)
def test_bad_canvas_domains_say_what_to_enter(make_institution, domain):
    institution = make_institution()
    institution.canvas_domain = domain
    with pytest.raises(ValidationError) as excinfo:
        institution.full_clean()
    assert "school.instructure.com" in excinfo.value.message_dict["canvas_domain"][0]


def test_a_bad_timezone_is_refused(make_institution):
    institution = make_institution(timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="IANA"):
        institution.full_clean()
