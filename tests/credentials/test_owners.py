"""The owner's daily summary: what it lists, and in which order (services/owners.py)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from credentials.models import FAILED_VERDICTS, CD2Credential, Notice
from credentials.services import notices, owners
from credentials.services.keys import institution_key_summary_refresh
from institutions.models import Contact, Institution
from tests.credentials import test_outbox
from tests.credentials.test_outbox import add_key, make_owner

clock = test_outbox.clock

pytestmark = pytest.mark.django_db


def institution(name: str, *, owner, days: int | None) -> Institution:
    slug = name.lower().replace(" ", "-")
    inst = Institution.objects.create(
        name=name, slug=slug, canvas_domain=f"{slug}.instructure.com", account_owner=owner
    )
    Contact.objects.create(institution=inst, name="Admin", email=f"admin@{slug}.example.edu")
    if days is not None:
        add_key(inst, days=days)
    return inst


def write_notice(inst: Institution, *, kind: str, state: str, now: dt.datetime, day: dt.date) -> Notice:
    notice = notices.notice_build(
        kind=kind,
        dedupe_key=f"{kind}:{inst.slug}",
        day=day,
        now=now,
        institution_id=inst.pk,
        credential_id=inst.credentials.values_list("pk", flat=True).first(),
    )
    notice.state = state
    if state == Notice.State.FAILED:
        notice.closed_at, notice.last_error = now, "SMTPRecipientsRefused: 550"
    notice.save(force_insert=True)
    return notice


def test_the_summary_lists_each_kind_of_news_in_its_order_and_nothing_of_other_owners(clock):
    owner, other = make_owner(), make_owner("paul")
    now, today = timezone.now(), timezone.localdate()
    reminded_b = institution("Reminded B", owner=owner, days=7)
    reminded_a = institution("Reminded A", owner=owner, days=14)
    superseded = institution("Superseded", owner=owner, days=7)
    lapsed_long = institution("Lapsed Long", owner=owner, days=-10)
    lapsed_b = institution("Lapsed B", owner=owner, days=-3)
    lapsed_a = institution("Lapsed A", owner=owner, days=-3)
    failing = institution("Failing", owner=owner, days=200)
    undelivered = institution("Undelivered", owner=owner, days=200)
    institution("Fine", owner=owner, days=200)
    institution("No key", owner=owner, days=None)
    theirs = institution("Theirs", owner=other, days=-5)
    paused = institution("Paused", owner=owner, days=-5)
    Institution.objects.filter(pk=paused.pk).update(status=Institution.Status.PAUSED)
    CD2Credential.objects.filter(institution=failing).update(last_verdict=FAILED_VERDICTS[0])
    institution_key_summary_refresh(institution_id=failing.pk)
    for inst in (reminded_b, reminded_a, theirs):
        write_notice(inst, kind=Notice.Kind.REMINDER, state=Notice.State.PENDING, now=now, day=today)
    write_notice(superseded, kind=Notice.Kind.REMINDER, state=Notice.State.SUPERSEDED, now=now, day=today)
    write_notice(undelivered, kind=Notice.Kind.RECEIPT, state=Notice.State.FAILED, now=now, day=today)
    yesterday = now - dt.timedelta(days=1)  # before the summary's window (the day since the last one)
    write_notice(
        failing, kind=Notice.Kind.REMINDER, state=Notice.State.SENT, now=yesterday, day=today - dt.timedelta(1)
    )

    summary = owners.owner_summary_build(user=owner, day=today, now=now)

    assert [n.institution.name for n in summary.reminders] == ["Reminded A", "Reminded B"]
    assert all(n.credential.hint for n in summary.reminders)
    # The newest lapse first; lapses of the same day by name.
    assert [(r.name, r.active_expires_on) for r in summary.lapsed] == [
        ("Lapsed A", today - dt.timedelta(3)),
        ("Lapsed B", today - dt.timedelta(3)),
        ("Lapsed Long", today - dt.timedelta(10)),
    ]
    assert summary.lapsed[0].active_hint == lapsed_a.credentials.get().hint
    assert [r.name for r in summary.failing] == ["Failing"]
    assert [(n.institution.name, n.kind) for n in summary.failed_notices] == [("Undelivered", Notice.Kind.RECEIPT)]
    assert summary.institutions == 7
    assert lapsed_long and lapsed_b  # named for reading; listed above


def test_a_failed_notice_older_than_the_summary_window_is_not_listed_again(clock):
    owner = make_owner()
    now, today = timezone.now(), timezone.localdate()
    undelivered = institution("Undelivered", owner=owner, days=200)
    write_notice(undelivered, kind=Notice.Kind.RECEIPT, state=Notice.State.FAILED, now=now, day=today)

    later = now + owners.SUMMARY_WINDOW + dt.timedelta(minutes=1)
    assert owners.owner_summary_build(user=owner, day=timezone.localdate(later), now=later).failed_notices == []
    assert len(owners.owner_summary_build(user=owner, day=today, now=now).failed_notices) == 1
