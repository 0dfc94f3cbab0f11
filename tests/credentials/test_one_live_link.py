"""One live submission link per institution (issue 25 item 2): a new link ends the older ones.

An older link's page says a newer one was sent, when and to whom (masked),
with the lost-link form. Reminders issue links through the same service.
The race (several issues at once) needs real row locking: PostgreSQL only.
"""

from __future__ import annotations

import threading

import pytest
from django.db import IntegrityError, connection, transaction
from django.urls import reverse
from django.utils import timezone

from credentials.formatting import format_day, masked_address
from credentials.models import SubmissionLink
from credentials.services.links import submission_link_create, submission_link_get, submission_link_revoke
from tests.conftest import reminders_run

pytestmark = pytest.mark.django_db


def open_links(institution) -> list[SubmissionLink]:
    return list(SubmissionLink.objects.filter(institution=institution, revoked_at__isnull=True, used_at__isnull=True))


def test_issuing_a_link_ends_the_older_one_and_names_the_newer(institution):
    first = submission_link_create(institution=institution, sent_to=["ada@northfield.example.edu"])
    second = submission_link_create(institution=institution, sent_to=["ada@northfield.example.edu"])

    first.link.refresh_from_db()
    assert open_links(institution) == [second.link]
    assert first.link.superseded_by_id == second.link.pk
    assert first.link.state() == "replaced"
    assert submission_link_get(token=first.token) is None
    assert submission_link_get(token=second.token) == second.link


def test_another_institutions_link_is_left_alone(institution, make_institution):
    theirs = submission_link_create(institution=make_institution())
    submission_link_create(institution=institution)

    assert submission_link_get(token=theirs.token) is not None


def test_the_database_refuses_a_second_open_link(institution):
    submission_link_create(institution=institution)
    with pytest.raises(IntegrityError), transaction.atomic():
        SubmissionLink.objects.create(
            institution=institution, token_hash="f" * 64, expires_at=timezone.now() + timezone.timedelta(days=1)
        )


def test_a_reminder_ends_the_link_staff_sent_before(institution, make_credential):
    staff_link = submission_link_create(institution=institution, sent_to=["ada@northfield.example.edu"])
    make_credential(institution, days=14)

    run = reminders_run()

    assert run.sent == 1
    (live,) = open_links(institution)
    assert live.reason == "reminder"
    staff_link.link.refresh_from_db()
    assert staff_link.link.superseded_by_id == live.pk


def test_a_replaced_links_page_names_the_newer_link_masked_with_the_lost_link_form(client, institution):
    old = submission_link_create(institution=institution, sent_to=["ada@northfield.example.edu"])
    newer = submission_link_create(
        institution=institution, sent_to=["ada@northfield.example.edu", "bo@northfield.example.edu"]
    )

    response = client.get(reverse("credentials:submit", kwargs={"token": old.token}))
    html = response.content.decode()

    assert response.status_code == 404
    assert "A newer link was sent on" in html and format_day(newer.link.created_at) in html
    assert "a•••@northfield.example.edu, b•••@northfield.example.edu" in html
    assert "ada@northfield.example.edu" not in html
    assert f'action="{reverse("credentials:request_link")}"' in html and 'name="email"' in html
    # Unknown tokens and links staff revoked keep the one page that says nothing.
    unknown = client.get(reverse("credentials:submit", kwargs={"token": "x" * 43})).content.decode()
    submission_link_revoke(link=newer.link)
    revoked = client.get(reverse("credentials:submit", kwargs={"token": newer.token})).content.decode()
    assert "A newer link" not in unknown and "A newer link" not in revoked


def test_a_used_link_is_not_ended_by_a_newer_one(institution):
    used = submission_link_create(institution=institution)
    SubmissionLink.objects.filter(pk=used.link.pk).update(used_at=timezone.now())
    submission_link_create(institution=institution)

    used.link.refresh_from_db()
    assert used.link.state() == "used" and used.link.superseded_by_id is None


@pytest.mark.parametrize(
    ("address", "masked"),
    [("ada@northfield.edu", "a•••@northfield.edu"), ("x@y.z", "x•••@y.z"), ("not-an-address", "•••"), ("", "•••")],
)
def test_masked_address_keeps_the_first_letter_and_the_domain(address, masked):
    assert masked_address(address) == masked


RACERS = 8


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("with_an_older_link", [False, True])
def test_simultaneous_issues_leave_exactly_one_live_link(institution, with_an_older_link):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL row locking (set DATABASE_URL)")
    if with_an_older_link:
        submission_link_create(institution=institution)
    start = threading.Barrier(RACERS)
    made, errors = [], []

    def issue() -> None:
        try:
            start.wait(timeout=30)
            made.append(submission_link_create(institution=institution).link.pk)
        except BaseException as exc:  # reported below, with the thread's own error
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=issue) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    assert len(made) == RACERS
    (live,) = open_links(institution)
    assert live.pk in made
    ended = SubmissionLink.objects.filter(institution=institution).exclude(pk=live.pk)
    assert ended.count() == RACERS - 1 + with_an_older_link
    assert not ended.filter(superseded_by__isnull=True).exists()
