"""The institution page is one timeline, newest first: links, keys, checks, reminders, staff actions."""

from __future__ import annotations

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from credentials.models import AuditEvent, CD2Credential, Notice, SubmissionLink
from credentials.selectors import institution_timeline
from credentials.services.links import submission_link_create
from credentials.services.staff import credential_revoke
from tests.conftest import reminder_step

pytestmark = pytest.mark.django_db


def test_the_timeline_lists_everything_that_happened_newest_first(
    client, make_staff, verified_login, institution, make_credential
):
    now = timezone.now()
    staff = make_staff("Customer success", username="cara")
    link = submission_link_create(institution=institution, created_by=staff).link
    SubmissionLink.objects.filter(pk=link.pk).update(created_at=now - dt.timedelta(days=40), sent_to="ada@x.edu")
    key = make_credential(institution, days=25)
    CD2Credential.objects.filter(pk=key.pk).update(
        submitted_at=now - dt.timedelta(days=30),
        last_verified_at=now - dt.timedelta(days=20),
        last_verdict="ok",
        last_verification="ok (200): 12 tables",
    )
    reminder_step(
        key, 30, at=now - dt.timedelta(days=5), recipients="ada@northfield.example.edu, owner@registry.example"
    )
    reminder_step(key, 60, state=Notice.State.SUPERSEDED, at=now - dt.timedelta(days=6))
    credential_revoke(credential=key, actor=staff, reason="Customer asked us to stop")

    entries = institution_timeline(institution=institution)

    assert [e.kind for e in entries] == ["staff", "reminder", "reminder", "check", "submission", "link"]
    assert entries[0].who == "cara" and entries[0].detail == "Customer asked us to stop"
    assert entries[1].title == f"Reminder 30 days before for key {key.hint}: Sent"
    assert entries[1].detail == "to ada@northfield.example.edu, owner@registry.example"
    assert entries[2].title.endswith(": Skipped")
    assert entries[3].title.endswith("checked: OK") and entries[3].detail == "ok (200): 12 tables"
    assert entries[5].who == "cara" and "to ada@x.edu" in entries[5].detail
    assert not AuditEvent.objects.filter(kind=AuditEvent.Kind.REVEAL).exists()

    verified_login(client, make_staff("Viewer"))
    body = client.get(reverse("admin:institutions_institution_change", args=[institution.pk])).content.decode()
    assert '<ol class="timeline">' in body
    assert "to ada@northfield.example.edu, owner@registry.example" in body
    assert body.index("Key revoked") < body.index("Reminder 30 days before") < body.index("Submission link made")
