"""Every customer mail in every state, rendered as its sender renders it: for the language and accessibility tests.

Each sample builds its context with the code the outbox's senders use
(link_context, the reminder's context, receipt_context, the refusal words,
the customer's messages), inside translation.override of the mail's language
as the senders do, then renders it with render_email. The key's dates are its
own and the "now" of each sample is counted from them, so nothing depends on
today's date.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Callable
from typing import NamedTuple

from django.utils import timezone, translation

from credentials.days import institution_key_days
from credentials.mail.context import link_context
from credentials.mail.messages import render_email
from credentials.mail.recipients import greeting_name, mail_owner
from credentials.models import CD2Credential, PendingReason
from credentials.services.pending import recheck_rejected_message
from credentials.services.reminders import _email_context
from credentials.services.submission import receipt_context
from credentials.services.verification import refusal_words
from institutions.models import Institution

# The staff's mails (owner summary, key conflict, staff alert and digest, break-glass) stay in English.
CUSTOMER_MAILS = ("link", "reminder", "key-invalid", "receipt", "submission-rejected")
LINK_URL = "https://registry.example.org/k/7QhW3xN2pLr8sTk1uVb6yZc0aDe4fGh5iJk9mNo2PqA/"


class Sample(NamedTuple):
    label: str
    subject: str
    text: str
    html: str


def _noon_before(institution: Institution, day: dt.date, days: int) -> dt.datetime:
    """Noon in the institution's zone, `days` days before `day` (negative: after)."""
    zone = institution.timezone or "UTC"
    moment = dt.datetime.combine(day - dt.timedelta(days=days), dt.time(12))
    return timezone.make_aware(moment, timezone=zoneinfo.ZoneInfo(zone))


def customer_mail_samples(*, institution: Institution, credential: CD2Credential, language: str) -> list[Sample]:
    """Each customer mail in each of its states, in `language`; `credential` is the institution's key."""
    samples: list[Sample] = []
    expires_on = credential.expires_on
    now = _noon_before(institution, expires_on, 40)
    to = [institution.contacts.order_by("pk").first().email]

    def add(label: str, name: str, context: Callable[[], dict]) -> None:
        with translation.override(language):
            built = context()
        samples.append(Sample(label, *render_email(name, built, language=language)))

    def link(**extra) -> dict:
        base = link_context(institution=institution, url=LINK_URL, expires_at=now + dt.timedelta(days=14))
        return {**base, "greeting_name": greeting_name(institution=institution, to=to), **extra}

    add("link", "link", link)
    add("link, nobody named", "link", lambda: link(greeting_name=""))

    for days_left in (30, 1, 0, -3):

        def reminder(days_left=days_left) -> dict:
            at = _noon_before(institution, expires_on, days_left)
            days = institution_key_days(institution, expires_on=expires_on, now=at)
            context = _email_context(credential=credential, days=days, link_context=link())
            return context

        add(f"reminder, {days_left} days left", "reminder", reminder)

    for rejected, error_type in ((True, ""), (False, "AccountDisabled")):

        def key_invalid(rejected=rejected, error_type=error_type) -> dict:
            return {
                **link(),
                "hint": credential.hint,
                "expires_on": expires_on,
                "checked_on": now.date(),
                "reason": refusal_words(rejected=rejected, error_type=error_type),
                "rejected": rejected,
            }

        add(f"key invalid, rejected={rejected}", "key-invalid", key_invalid)

    credential.submitted_by = "Ada Admin"
    credential.submitted_by_email = to[0]
    credential.submitted_at = now
    states = [(CD2Credential.Status.ACTIVE, "", None)] + [
        (CD2Credential.Status.PENDING_VERIFICATION, reason.value, error)
        for reason, error in (
            (PendingReason.UNAVAILABLE, None),
            (PendingReason.NOT_ENABLED, "AccountNotOnboarded"),
            (PendingReason.MAINTENANCE, "AccountUnderMaintenance"),
        )
    ]
    for status, pending_reason, error_type in states:

        def receipt(status=status, pending_reason=pending_reason, error_type=error_type) -> dict:
            credential.status = status
            credential.pending_reason = pending_reason
            context = receipt_context(credential, error_type=error_type, now=now)
            return {**context, "greeting_name": greeting_name(institution=institution, to=to, known="Ada Admin")}

        add(f"receipt, {status} {pending_reason}", "receipt", receipt)
    credential.status = CD2Credential.Status.ACTIVE
    credential.pending_reason = ""

    def rejected_base() -> dict:
        return {
            "credential": credential,
            "message": recheck_rejected_message(),
            "rejected": True,
            "institution": institution,
        }

    add("submission rejected, new link", "submission-rejected", lambda: {**link(), **rejected_base()})
    for sent in (True, False):
        add(
            f"submission rejected, to the submitter, link sent to contacts={sent}",
            "submission-rejected",
            lambda sent=sent: {
                **rejected_base(),
                "owner": mail_owner(institution),
                "link_sent_to_contacts": sent,
                "greeting_name": "Ada Admin",
            },
        )
    return samples
