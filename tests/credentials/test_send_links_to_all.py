"""`send_links_to_all`: after a lost FERNET_KEYS, every served institution is asked for a new key, once."""

from __future__ import annotations

import datetime as dt
from io import StringIO

import pytest
import time_machine
from django.core import mail
from django.core.management import CommandError, call_command
from django.utils import timezone

from credentials.models import AuditEvent, LinkBatchItem
from credentials.services import jobs
from credentials.tasks import deliver_notice
from institutions.models import Contact, Institution

pytestmark = pytest.mark.django_db


def test_every_served_institution_gets_one_link_however_often_its_task_runs(
    make_institution, celery_messages, django_capture_on_commit_callbacks
):
    served = [make_institution(status=s) for s in (Institution.Status.ACTIVE, Institution.Status.ONBOARDING)]
    paused = make_institution(status=Institution.Status.PAUSED)
    for inst in [*served, paused]:
        Contact.objects.create(institution=inst, name="Admin", email=f"admin@{inst.slug}.example.edu")
    out = StringIO()

    with django_capture_on_commit_callbacks(execute=True):
        call_command("send_links_to_all", "--reason", "encryption key lost", stdout=out)

    items = LinkBatchItem.objects.all()
    assert sorted(items.values_list("institution_id", flat=True)) == sorted(i.pk for i in served)
    assert [m["task"] for m in celery_messages] == [jobs.DELIVER_NOTICE] * 2
    assert sorted(m["args"][0] for m in celery_messages) == sorted(items.values_list("notice_id", flat=True))
    with time_machine.travel(timezone.now() + dt.timedelta(seconds=1)):
        for message in celery_messages:  # each task delivered twice: mailed once
            deliver_notice(*message["args"])
            deliver_notice(*message["args"])
    assert sorted(m.to[0] for m in mail.outbox) == sorted(f"admin@{i.slug}.example.edu" for i in served)
    assert "Queued a submission link for 2 institution(s)" in out.getvalue()
    event = AuditEvent.objects.get(kind=AuditEvent.Kind.LINK_CREATED, detail__bulk=True)
    assert event.reason == "encryption key lost" and event.detail["institutions"] == 2


def test_it_refuses_without_a_real_reason(make_institution):
    make_institution()
    with pytest.raises(CommandError, match="reason"):
        call_command("send_links_to_all", "--reason", "x")
    assert not LinkBatchItem.objects.exists()
