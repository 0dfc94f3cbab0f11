"""Every admin action that mails customers asks first (issue 25 item 3).

The page lists who will receive what; GET, or a POST without the
confirmation, mails nobody; "Yes, send" (a POST with CSRF) sends and the
answer says how many addresses were mailed.
"""

from __future__ import annotations

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from credentials.models import LinkBatch, Notice, SubmissionLink
from institutions.models import Contact
from tests.conftest import reminder_step

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:institutions_institution_changelist")


def button(institution, name: str) -> str:
    return reverse(f"admin:institutions_institution_{name}", args=[institution.pk])


def test_send_link_shows_who_gets_what_and_sends_only_on_confirmation(staff_client, institution):
    Contact.objects.create(institution=institution, name="Bo", email="bo@northfield.example.edu")
    client = staff_client("Customer success")

    page = client.get(button(institution, "send_link"))
    unconfirmed = client.post(button(institution, "send_link"))

    html = page.content.decode()
    assert page.status_code == 200 and unconfirmed.status_code == 200
    assert "ada@northfield.example.edu, bo@northfield.example.edu" in html
    assert "2 addresses at 1 institution" in html and "A new submission link" in html
    assert 'name="csrfmiddlewaretoken"' in html and 'name="confirm" value="yes"' in html
    assert mail.outbox == [] and not SubmissionLink.objects.exists() and not Notice.objects.exists()

    done = client.post(button(institution, "send_link"), {"confirm": "yes"}, follow=True)

    assert "(2 addresses)" in done.content.decode()
    assert [sorted(m.to) for m in mail.outbox] == [["ada@northfield.example.edu", "bo@northfield.example.edu"]]


def test_send_link_to_an_institution_without_contacts_offers_no_send_button(staff_client, make_institution):
    lonely = make_institution(name="Lonely College")

    html = staff_client("Customer success").get(button(lonely, "send_link")).content.decode()

    assert "Nobody to mail" in html and "Yes, send" not in html


def test_send_reminder_now_asks_first(staff_client, institution, make_credential):
    key = make_credential(institution, days=10)
    client = staff_client("Customer success")

    html = client.get(button(institution, "send_reminder")).content.decode()

    assert f"The expiry reminder about key {key.hint}" in html and "ada@northfield.example.edu" in html
    assert mail.outbox == [] and not Notice.objects.exists()
    done = client.post(button(institution, "send_reminder"), {"confirm": "yes"}, follow=True)
    assert "(1 address)" in done.content.decode()
    assert [m.to for m in mail.outbox] == [["ada@northfield.example.edu"]]


def test_the_institution_page_links_to_the_confirmation_pages_and_posts_nothing_that_mails(
    staff_client, institution, make_credential
):
    make_credential(institution, days=10)
    html = staff_client("Customer success").get(button(institution, "change")).content.decode()

    assert f'href="{button(institution, "send_link")}"' in html
    assert f'href="{button(institution, "send_reminder")}"' in html
    assert f'action="{button(institution, "send_link")}"' not in html


def test_the_bulk_send_lists_each_institution_and_sends_only_on_confirmation(
    staff_client, institution, make_institution, django_capture_on_commit_callbacks
):
    lonely = make_institution(name="Lonely College")
    client = staff_client("Customer success")
    chosen = {"action": "send_submission_links", "index": "0", "_selected_action": [institution.pk, lonely.pk]}

    page = client.post(CHANGELIST, chosen)

    html = page.content.decode()
    assert page.status_code == 200
    assert "Send a submission link to 1 institution?" in html
    assert "Northfield University</td><td>ada@northfield.example.edu" in html
    assert "Nobody to mail at 1 institution" in html and "Lonely College" in html
    for pk in (institution.pk, lonely.pk):
        assert f'name="_selected_action" value="{pk}"' in html
    assert not LinkBatch.objects.exists() and not Notice.objects.exists()

    with django_capture_on_commit_callbacks(execute=False):
        done = client.post(CHANGELIST, {**chosen, "confirm": "yes"})

    batch = LinkBatch.objects.get()
    assert done["Location"] == reverse("admin:institutions_institution_link_batch", args=[batch.pk])
    assert batch.items.count() == 2


def test_resend_of_a_failed_reminder_asks_first_then_says_how_many_got_it(staff_client, institution, make_credential):
    step = reminder_step(
        make_credential(institution, days=10), 14, state=Notice.State.FAILED, last_error="SMTPRecipientsRefused"
    )
    notice = step.notice
    client = staff_client("Customer success")
    url = reverse("admin:credentials_notice_resend", args=[notice.pk])

    html = client.get(url + "?next=" + reverse("admin:index")).content.decode()

    assert "ada@northfield.example.edu" in html and "14 days before" in html
    assert f'name="next" value="{reverse("admin:index")}"' in html
    notice.refresh_from_db()
    assert notice.state == Notice.State.FAILED and mail.outbox == []

    done = client.post(url, {"confirm": "yes", "next": reverse("admin:index")})

    assert done["Location"] == reverse("admin:index")
    notice.refresh_from_db()
    assert notice.state == Notice.State.SENT and notice.sent_at <= timezone.now()
    assert [m.to for m in mail.outbox] == [["ada@northfield.example.edu"]]
    messages = [str(m) for m in done.wsgi_request._messages]
    assert any("(1 address)" in m for m in messages)


def test_the_dashboard_resend_is_a_link_to_the_confirmation(staff_client, institution, make_credential):
    step = reminder_step(make_credential(institution, days=10), 14, state=Notice.State.FAILED)

    html = staff_client("Customer success").get(reverse("admin:index")).content.decode()

    url = reverse("admin:credentials_notice_resend", args=[step.notice.pk])
    assert f'href="{url}?next={reverse("admin:index")}"' in html
    assert f'action="{url}"' not in html


@pytest.mark.parametrize("name", ["send_link", "send_reminder"])
def test_a_viewer_does_not_even_see_the_confirmation(staff_client, institution, make_credential, name):
    make_credential(institution)
    assert staff_client("Viewer").get(button(institution, name)).status_code == 403


def test_csrf_is_checked_on_the_confirmation(institution, make_staff, verified_login):
    client = verified_login(Client(enforce_csrf_checks=True), make_staff("Customer success"))

    response = client.post(button(institution, "send_link"), {"confirm": "yes"})

    assert response.status_code == 403 and mail.outbox == []
