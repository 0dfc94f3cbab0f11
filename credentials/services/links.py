"""Single-use submission links: make one, look one up, mail one, revoke one, "lost the link?".

Only the SHA-256 of a link's token is stored: a database dump cannot be
replayed as links. The token exists in memory (NewLink) only until it is mailed.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from dataclasses import dataclass

from django.conf import settings
from django.db import models, transaction
from django.urls import reverse
from django.utils import timezone

from credentials.emails import send_email
from credentials.models import AuditEvent, LinkBatch, LinkBatchItem, SubmissionLink, hash_token
from credentials.notifications import SEND_ERRORS, contact_emails, link_context, reply_to
from credentials.services import jobs
from credentials.services.audit import audit_record
from institutions.models import Contact, Institution, email_key

logger = logging.getLogger(__name__)

# A token longer than this is not one of ours: refused before it is hashed.
MAX_TOKEN_LENGTH = 100


@dataclass(frozen=True)
class NewLink:
    """A link just made: the token exists only here, the database keeps its hash."""

    link: SubmissionLink
    token: str

    @property
    def url(self) -> str:
        return settings.SITE_URL + reverse("credentials:submit", kwargs={"token": self.token})

    def context(self) -> dict:
        """The mail context of this link (notifications.link_context)."""
        return link_context(institution=self.link.institution, url=self.url, expires_at=self.link.expires_at)

    def __repr__(self) -> str:
        return f"NewLink(link={self.link.pk})"


def submission_link_create(
    *,
    institution: Institution,
    created_by=None,
    days: int | None = None,
    reason: str = "staff",
    ip_address: str | None = None,
    now: dt.datetime | None = None,
    sent_to: list[str] | None = None,
) -> NewLink:
    """A new single-use link; `sent_to`: the addresses it is about to be mailed to, in the same transaction."""
    now = now or timezone.now()
    days = settings.SUBMISSION_LINK_DAYS if days is None else days
    if days < 1:
        raise ValueError("A submission link must stay valid for at least one day.")
    token = secrets.token_urlsafe(32)
    link = SubmissionLink.objects.create(
        institution=institution,
        token_hash=hash_token(token),
        created_at=now,
        created_by=created_by,
        reason=reason,
        expires_at=now + dt.timedelta(days=days),
        sent_to=", ".join(sent_to or ()),
    )
    audit_record(
        kind=AuditEvent.Kind.LINK_CREATED,
        actor=created_by,
        actor_label="" if created_by else f"system ({reason})",
        institution=institution,
        ip_address=ip_address,
        detail={"link_id": link.pk, "expires_at": link.expires_at.isoformat(), "reason": reason},
    )
    return NewLink(link=link, token=token)


def submission_link_mark_sent(*, new_link: NewLink, recipients: list[str]) -> None:
    """Note on the link where it was mailed (shown to staff)."""
    new_link.link.sent_to = ", ".join(recipients)
    SubmissionLink.objects.filter(pk=new_link.link.pk).update(sent_to=new_link.link.sent_to)


def submission_link_get(*, token: str, now: dt.datetime | None = None) -> SubmissionLink | None:
    """The usable link for this token, or None (unknown, expired, revoked or used alike)."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    link = SubmissionLink.objects.select_related("institution").filter(token_hash=hash_token(token)).first()
    if link is None or not link.is_usable(now):
        return None
    return link


def _mail_new_link(*, new_link: NewLink, to: list[str]) -> None:
    """Mail the link and note where it went; raises on SMTP errors (the caller's transaction rolls back)."""
    institution = new_link.link.institution
    send_email("link", to=to, reply_to=reply_to(institution), context=new_link.context())
    submission_link_mark_sent(new_link=new_link, recipients=to)


def submission_link_send(
    *,
    institution: Institution,
    created_by=None,
    days: int | None = None,
    reason: str = "staff",
    ip_address: str | None = None,
) -> NewLink:
    """Make a link and mail it to the institution's contacts who receive reminders.

    Reply-To is the account owner, so a customer's question reaches a person.
    Raises ValueError (with a message for staff) when there is nobody to
    mail; the link is then not made. A mail error rolls the link back too.
    """
    recipients = contact_emails(institution)
    if not recipients:
        raise ValueError(
            f"{institution.name} has no contact who receives reminders, so there is nobody to send the link to. "
            f"Add a contact (or tick “receives reminders” on one) and send again."
        )
    with transaction.atomic():
        new_link = submission_link_create(
            institution=institution, created_by=created_by, days=days, reason=reason, ip_address=ip_address
        )
        _mail_new_link(new_link=new_link, to=recipients)
    logger.info(
        "Submission link %s mailed to %d contact(s) of institution %s",
        new_link.link.pk,
        len(recipients),
        institution.pk,
    )
    return new_link


def submission_link_revoke(*, link: SubmissionLink, actor=None, now: dt.datetime | None = None) -> bool:
    """Revoke a link that is not used or revoked yet; True if this call revoked it."""
    now = now or timezone.now()
    revoked = SubmissionLink.objects.filter(pk=link.pk, revoked_at__isnull=True, used_at__isnull=True).update(
        revoked_at=now
    )
    if revoked:
        link.revoked_at = now
        audit_record(
            kind=AuditEvent.Kind.LINK_REVOKED,
            actor=actor,
            actor_label="" if getattr(actor, "pk", None) else "system",
            institution=link.institution,
            detail={"link_id": link.pk},
        )
    return bool(revoked)


def link_request_queue(*, email: str, ip_address: str | None) -> None:
    """The "lost the link?" page: the lookup and the mail happen in a task, so every address answers alike.

    robust: with the broker down the page must still give the same answer.
    """
    jobs.job_enqueue_on_commit(jobs.REQUEST_SUBMISSION_LINK, args=(email, ip_address), robust=True)


def link_request(*, email: str, ip_address: str | None = None) -> None:
    """ "Lost the link?": mail a fresh link to this address if it is a contact of a served institution.

    Does the same, returns the same and logs the same whether or not the
    address matched, so the page built on it reveals nothing. The link goes
    only to the address asked for, never to the other contacts.
    """
    key = email_key(email)
    if not key:
        return
    # The database's case-insensitive match by the key only narrows the rows
    # down (PostgreSQL's UPPER() also matches look-alikes such as a dotless
    # ı); the decision is email_key's, the same key the page's rate limit
    # counts by, so no spelling reaches a contact outside that limit.
    contacts = [
        contact
        for contact in Contact.objects.select_related("institution", "institution__account_owner").filter(
            institution__status__in=Institution.SERVED_STATUSES, email__iexact=key
        )
        if email_key(contact.email) == key
    ]
    for contact in contacts:
        institution = contact.institution
        with transaction.atomic():
            new_link = submission_link_create(institution=institution, reason="request", ip_address=ip_address)
            _mail_new_link(new_link=new_link, to=[contact.email])


# --------------------------------------------------------------------------
# Many at once (after a bulk import)
# --------------------------------------------------------------------------


def link_batch_create(*, institution_ids: list[int], created_by=None) -> LinkBatch:
    """Queue a submission link for each institution, LINK_BULK_PER_SECOND apart; the tasks run after commit.

    Each institution is one LinkBatchItem, mailed by link_batch_item_send
    exactly once however often its task is delivered.
    """
    rate = max(float(settings.LINK_BULK_PER_SECOND), 0.1)
    with transaction.atomic():
        batch = LinkBatch.objects.create(created_by=created_by)
        items = LinkBatchItem.objects.bulk_create(
            LinkBatchItem(batch=batch, institution_id=pk) for pk in sorted(set(institution_ids))
        )
        for position, item in enumerate(items):
            jobs.job_enqueue_on_commit(jobs.SEND_BATCH_LINK, args=(item.pk,), countdown=position / rate)
    return batch


def link_batch_item_send(*, item_id: int) -> str:
    """Send one queued item of a batch; returns its final state.

    Claimed first with a conditional UPDATE (queued -> sending): a task
    delivered twice finds nothing to claim and sends nothing.
    """
    if not LinkBatchItem.objects.filter(pk=item_id, state=LinkBatchItem.State.QUEUED).update(
        state=LinkBatchItem.State.SENDING
    ):
        return "already handled"
    item = LinkBatchItem.objects.select_related("batch__created_by", "institution__account_owner").get(pk=item_id)
    state, error, link = LinkBatchItem.State.SENT, "", None
    try:
        link = submission_link_send(institution=item.institution, created_by=item.batch.created_by, reason="bulk").link
    except ValueError as exc:  # nobody to mail
        state, error = LinkBatchItem.State.SKIPPED, str(exc)
    except SEND_ERRORS as exc:
        state, error = LinkBatchItem.State.FAILED, f"{type(exc).__name__}: {exc}"
    LinkBatchItem.objects.filter(pk=item_id).update(
        state=state, error=error[:500], link=link, finished_at=timezone.now()
    )
    return state


def link_batch_progress(*, batch: LinkBatch) -> dict[str, int]:
    """How many items of the batch are in each state (every state present, 0 when none)."""
    counts = dict(batch.items.order_by().values_list("state").annotate(n=models.Count("pk")).values_list("state", "n"))
    return {state: counts.get(state, 0) for state in LinkBatchItem.State.values}
