"""Filter values an admin list cannot hold: the whole list with a message, never a 500.

The API's cursor: tests/api/test_cursor.py. Every list and filter, as every role: test_admin_crawl.py.
"""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from credentials.models import AuditEvent, Notice
from credentials.services.audit import audit_record
from credentials.services.links import submission_link_create
from safeadmin.lists import MESSAGE

pytestmark = pytest.mark.django_db

LISTS = {
    "institution": "admin:institutions_institution_changelist",
    "link": "admin:credentials_submissionlink_changelist",
    "audit": "admin:credentials_auditevent_changelist",
    "notice": "admin:credentials_notice_changelist",
    "key": "admin:credentials_cd2credential_changelist",
}
# Each answered 500 before (issue 24): a year SQL or Python's dates cannot hold, on any list.
YEARS = ("10000", "0", "-1", "99999999999999999999")


@pytest.fixture
def staff_client(make_staff, verified_login, institution, make_credential):
    key = make_credential(institution)
    owner = make_staff("Customer success")
    submission_link_create(institution=institution, created_by=owner, reason="staff")
    audit_record(kind=AuditEvent.Kind.REVEAL, actor=owner, credential=key, reason="a row to list")
    now = timezone.now()
    Notice.objects.create(
        kind=Notice.Kind.REMINDER,
        dedupe_key="filter-values",
        institution=institution,
        credential=key,
        day=timezone.localdate(),
        as_of=now,
        retry_until=now,
    )
    return verified_login(Client(raise_request_exception=False), make_staff("Viewer"))


def refused_to_the_whole_list(client, url: str, query: str) -> None:
    response = client.get(f"{url}?{query}")
    assert response.status_code == 302, (query, response.status_code)
    assert response["Location"] == f"{url}?e=1"
    whole = client.get(response["Location"])
    assert whole.status_code == 200
    assert MESSAGE in [str(m) for m in get_messages(whole.wsgi_request)]
    cl = whole.context["cl"]
    assert cl.result_count == cl.model._default_manager.count() > 0  # the whole list, unfiltered


@pytest.mark.parametrize("name", LISTS)
@pytest.mark.parametrize("year", YEARS)
def test_a_year_no_date_can_hold_answers_the_whole_list_with_a_message(staff_client, name, year):
    refused_to_the_whole_list(staff_client, reverse(LISTS[name]), f"created_at__year={year}")


def test_a_drill_down_past_9999_and_an_impossible_day_answer_the_whole_list(staff_client):
    url = reverse(LISTS["audit"])  # date_hierarchy = created_at
    refused_to_the_whole_list(staff_client, url, "created_at__year=9999")
    refused_to_the_whole_list(staff_client, url, "created_at__year=2026&created_at__month=2&created_at__day=30")
    assert staff_client.get(f"{url}?created_at__year=2026").status_code == 200  # a real year still filters


@pytest.mark.parametrize("value", ["9999-12", "10000-01", "0000-01", "2026-13", "soon"])
def test_an_expiry_month_the_filter_cannot_hold_answers_the_whole_list(staff_client, value):
    refused_to_the_whole_list(staff_client, reverse(LISTS["institution"]), f"expiry={value}")


def test_a_real_expiry_month_still_filters(staff_client, institution):
    key = institution.credentials.get()
    url = reverse(LISTS["institution"])
    month = key.expires_on.strftime("%Y-%m")
    shown = staff_client.get(f"{url}?expiry={month}")
    assert shown.status_code == 200 and list(shown.context["cl"].result_list) == [institution]
