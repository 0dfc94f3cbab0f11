"""A bulk "send links" to 500 institutions mails 500 messages once each, counted at a real SMTP server."""

from __future__ import annotations

import datetime as dt
import socket

import pytest
import time_machine
from aiosmtpd.controller import Controller
from django.db.models import Max, Min
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from credentials.models import LinkBatchItem, Notice, SubmissionLink
from credentials.services import jobs
from credentials.tasks import deliver_notice
from institutions.models import Contact, Institution

pytestmark = pytest.mark.django_db


class Inbox:
    def __init__(self) -> None:
        self.recipients: list[str] = []

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd calls it by this name
        self.recipients.extend(envelope.rcpt_tos)
        return "250 Message accepted for delivery"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_500_institutions_get_500_mails_once_each_at_a_steady_rate(
    client, make_staff, verified_login, monkeypatch, django_capture_on_commit_callbacks
):
    institutions = Institution.objects.bulk_create(
        Institution(name=f"Bulk {i:03d}", slug=f"bulk-{i:03d}", canvas_domain=f"bulk{i:03d}.instructure.com")
        for i in range(500)
    )
    Contact.objects.bulk_create(
        Contact(institution=inst, name="Admin", email=f"admin@{inst.slug}.edu") for inst in institutions
    )
    queued: list[tuple[int, float]] = []
    monkeypatch.setattr(
        jobs, "job_enqueue", lambda name, *, args=(), countdown=None: queued.append((args[0], countdown))
    )
    verified_login(client, make_staff("Customer success"))
    with django_capture_on_commit_callbacks(execute=True), override_settings(LINK_BULK_PER_SECOND=10):
        response = client.post(
            reverse("admin:institutions_institution_changelist"),
            {
                "action": "send_submission_links",
                "select_across": "1",
                "index": "0",
                "_selected_action": ["0"],
                "confirm": "yes",  # the "Yes, send 500 links" of the confirmation page
            },
        )
    assert response.status_code == 302
    assert len(queued) == 500
    assert sorted(countdown for _, countdown in queued)[-1] == pytest.approx(49.9)  # 10 a second

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        with override_settings(
            EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
            EMAIL_HOST="127.0.0.1",
            EMAIL_PORT=controller.port,
            EMAIL_USE_TLS=False,
            EMAIL_USE_SSL=False,
            EMAIL_HOST_USER="",
            EMAIL_HOST_PASSWORD="",
        ):
            # The last in line (49.9 s out), not one due in a second: a busy machine can take that second.
            last, _ = max(queued, key=lambda item: item[1])
            assert deliver_notice(last) is False  # not before its place in the line
            with time_machine.travel(timezone.now() + dt.timedelta(seconds=50)):
                for notice_id, _ in queued + queued:  # every task delivered twice
                    deliver_notice(notice_id)
    finally:
        controller.stop()

    assert len(inbox.recipients) == 500
    assert len(set(inbox.recipients)) == 500
    assert SubmissionLink.objects.count() == 500
    assert set(LinkBatchItem.objects.values_list("notice__state", flat=True)) == {Notice.State.SENT}
    spread = Notice.objects.aggregate(first=Min("next_attempt_at"), last=Max("next_attempt_at"))
    assert (spread["last"] - spread["first"]).total_seconds() == pytest.approx(49.9)  # a sweep keeps the rate too
    progress = client.get(response["Location"]).content.decode()
    assert "Submission links: 500 of 500 done" in progress
