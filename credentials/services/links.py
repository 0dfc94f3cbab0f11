"""Single-use submission links: make one, look one up, mail one, revoke one, "lost the link?".

Only the SHA-256 of a link's token is stored: a database dump cannot be
replayed as links. The token exists in memory (NewLink) only until it is mailed.
Mailed links go through the outbox (see "Mailing a link" below for why the
link is made at delivery and not when the notice is written).
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, models, transaction
from django.urls import reverse
from django.utils import timezone

from credentials.formatting import masked_address
from credentials.mail.context import link_context
from credentials.mail.messages import build_email
from credentials.mail.recipients import contact_emails, greeting_name, reply_to
from credentials.models import AuditEvent, LinkBatch, LinkBatchItem, Notice, SubmissionLink, hash_token
from credentials.outgoing import Send, Skip
from credentials.services import jobs, notices
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
        """The mail context of this link (mail.context.link_context)."""
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
    """A new single-use link, which ends the institution's older open links; `sent_to`: where it is about to go.

    One live link per institution (the constraint one_open_link_per_institution):
    in one transaction the older open links are locked and ended
    (revoked_at, superseded_by the new one) and the new link is written. Two
    issues at once: the second waits for the first's lock, or its insert meets
    the first's committed link; it then ends that one and inserts again.
    """
    now = now or timezone.now()
    days = settings.SUBMISSION_LINK_DAYS if days is None else days
    if days < 1:
        raise ValueError("A submission link must stay valid for at least one day.")
    token = secrets.token_urlsafe(32)
    for attempt in range(ISSUE_ATTEMPTS):
        try:
            with transaction.atomic():
                link, ended = _link_issue(
                    institution=institution,
                    token_hash=hash_token(token),
                    created_by=created_by,
                    reason=reason,
                    now=now,
                    expires_at=now + dt.timedelta(days=days),
                    sent_to=", ".join(sent_to or ()),
                )
            break
        except IntegrityError:
            # Another issue for this institution committed between our look and our insert: look again.
            if attempt == ISSUE_ATTEMPTS - 1:
                raise
    audit_record(
        kind=AuditEvent.Kind.LINK_CREATED,
        actor=created_by,
        actor_label="" if created_by else f"system ({reason})",
        institution=institution,
        ip_address=ip_address,
        detail={
            "link_id": link.pk,
            "expires_at": link.expires_at.isoformat(),
            "reason": reason,
            **({"ended_links": ended} if ended else {}),
        },
    )
    return NewLink(link=link, token=token)


# Tries of one issue: a try fails only when another issue for the same institution committed meanwhile,
# so this many simultaneous issues always end; more (never seen: issues are a few a day) raise
# IntegrityError and the outbox retries that notice later. No lock on the institution row: the key
# services lock a link and then update the institution, and the opposite order could deadlock.
ISSUE_ATTEMPTS = 20


def _link_issue(
    *, institution: Institution, token_hash: str, now: dt.datetime, **fields
) -> tuple[SubmissionLink, list]:
    """End the institution's open links and write the new one (call in a transaction); (the link, ids ended)."""
    open_links = SubmissionLink.objects.filter(institution=institution, revoked_at__isnull=True, used_at__isnull=True)
    # Locked: a customer using one of them now waits for us (and then finds it ended), and so does another issue.
    ended = list(open_links.select_for_update().order_by("pk").values_list("pk", flat=True))
    if ended:
        SubmissionLink.objects.filter(pk__in=ended).update(revoked_at=now)
    link = SubmissionLink.objects.create(institution=institution, token_hash=token_hash, created_at=now, **fields)
    if ended:
        SubmissionLink.objects.filter(pk__in=ended).update(superseded_by=link)
    return link, ended


@dataclass(frozen=True)
class ReplacedLink:
    """What an ended link's page may say of the newer link: when it was sent, and to whom (masked)."""

    sent_at: dt.datetime
    sent_to: tuple[str, ...]


def submission_link_replaced(*, token: str) -> ReplacedLink | None:
    """For the token of a link a newer one ended (not used, not revoked by staff): the newest link's send, masked.

    Only the holder of the old link's token learns this, and only the
    addresses' first letters and domains (formatting.masked_address).
    """
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    old = (
        SubmissionLink.objects.filter(token_hash=hash_token(token), used_at__isnull=True, superseded_by__isnull=False)
        .only("pk", "institution_id", "created_at")
        .first()
    )
    if old is None:
        return None
    newest = (
        SubmissionLink.objects.filter(institution_id=old.institution_id, created_at__gte=old.created_at)
        .exclude(pk=old.pk)
        .order_by("-created_at", "-pk")
        .only("created_at", "sent_to")
        .first()
    )
    if newest is None:
        return None
    addresses = [address.strip() for address in newest.sent_to.split(",") if address.strip()]
    return ReplacedLink(sent_at=newest.created_at, sent_to=tuple(masked_address(a) for a in addresses))


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


# --------------------------------------------------------------------------
# Mailing a link: through the outbox
# --------------------------------------------------------------------------
#
# A mailed link is a Notice (kind SUBMISSION_LINK) written in the transaction
# that decides to send it; the link itself is made by the sender, at
# delivery, in the transaction that records the mail server's acceptance.
# Why there and not at decision time: only a link's hash is stored, so a
# link made early would need its token kept somewhere until the mail goes
# out (in the payload it would sit in plain text in every backup; encrypted,
# it would still outlive its use and tie the outbox to FERNET_KEYS, the very
# keys whose loss send_links_to_all answers). Made at delivery, the token
# lives only in the sender's memory; a send the mail server refuses rolls
# the link back with it, so a retry hours later makes and mails a fresh,
# working link valid for its full `days`; a notice superseded or cancelled
# before delivery makes none. The payload holds only what the sender needs:
# why (reason), who asked (created_by, ip_address), how long (days) and, for
# a "lost the link?" request, the one address asked for.
#
# The duplicate bound (services/notices.py): a sender killed after the mail
# server took the message but before its transaction committed leaves the
# notice "sending"; after the lease it is sent once more. The first mail's
# link was rolled back with that transaction, so the customer holds two
# mails of which the later one works; never more than that one extra.

LINK_REASONS_ALWAYS_SENT = ("staff", "command")


def _link_notice(
    *,
    institution: Institution,
    dedupe_key: str,
    recipients: list[str],
    reason: str,
    created_by=None,
    days: int | None = None,
    ip_address: str | None = None,
    to: str = "",
    now: dt.datetime,
    not_before: dt.datetime | None = None,
) -> Notice:
    """An unsaved submission-link notice (no token: the sender makes the link)."""
    days = settings.SUBMISSION_LINK_DAYS if days is None else days
    if days < 1:
        raise ValueError("A submission link must stay valid for at least one day.")
    payload = {"reason": reason, "days": days, "created_by": getattr(created_by, "pk", None)}
    if ip_address:
        payload["ip_address"] = ip_address
    if to:
        payload["to"] = to
    notice = notices.notice_build(
        kind=Notice.Kind.SUBMISSION_LINK,
        dedupe_key=dedupe_key,
        day=timezone.localdate(now),
        now=now,
        institution_id=institution.pk,
        recipients=", ".join(recipients),
        payload=payload,
    )
    if not_before is not None:
        notice.next_attempt_at = not_before
    return notice


def submission_link_send(
    *,
    institution: Institution,
    created_by=None,
    days: int | None = None,
    reason: str = "staff",
    ip_address: str | None = None,
    now: dt.datetime | None = None,
) -> Notice:
    """Write a notice that mails a fresh link to the institution's contacts who receive reminders.

    Reply-To is the account owner, so a customer's question reaches a person.
    Raises ValueError (with a message for staff) when there is nobody to
    mail; nothing is written then. The door delivers the notice at once
    (outbox.notice_deliver) for staff's answer; a refused send waits in the
    outbox for its retry, so the link is never lost.
    """
    now = now or timezone.now()
    recipients = contact_emails(institution)
    if not recipients:
        raise ValueError(
            f"{institution.name} has no contact who receives reminders, so there is nobody to send the link to. "
            f"Add a contact (or tick “receives reminders” on one) and send again."
        )
    notice = _link_notice(
        institution=institution,
        dedupe_key=f"link:{institution.pk}:{uuid.uuid4().hex}",  # each click is its own decision
        recipients=recipients,
        reason=reason,
        created_by=created_by,
        days=days,
        ip_address=ip_address,
        now=now,
    )
    notice.save(force_insert=True)
    return notice


def _link_addressees(*, notice: Notice, institution: Institution) -> tuple[list[str], str]:
    """Who the notice's link goes to now (the address asked for, if still on file, or the contacts), or why nobody."""
    asked = notice.payload.get("to")
    if not asked:
        to = contact_emails(institution)
        return to, "" if to else f"{institution.name} has no contact who receives reminders: nobody to mail."
    key = email_key(asked)
    on_file = Contact.objects.filter(institution=institution, email__iexact=key)
    if any(email_key(c.email) == key for c in on_file):
        return [asked], ""
    return [], "The address asked for is no longer a contact of the institution: not sent."


def link_notice_write(*, notice: Notice, now: dt.datetime) -> Send | Skip:
    """The outbox's sender of a SUBMISSION_LINK notice: make the link and the mail around it, or say why not.

    A request or a bulk send for an institution no longer served (paused,
    offboarded since) is superseded; a notice whose addressees are gone is
    cancelled. In both cases no link is made. The link is made in the
    outbox's transaction, so a failed send rolls it back.
    """
    institution = Institution.objects.select_related("account_owner").get(pk=notice.institution_id)
    reason = notice.payload.get("reason", "staff")
    if reason not in LINK_REASONS_ALWAYS_SENT and not institution.is_served():
        why = f"Not sent: the institution is {institution.get_status_display().lower()}."
        return Skip(state=Notice.State.SUPERSEDED, reason=why)
    to, why = _link_addressees(notice=notice, institution=institution)
    if not to:
        return Skip(state=Notice.State.CANCELLED, reason=why)
    asked_by = notice.payload.get("created_by")
    created_by = get_user_model().objects.filter(pk=asked_by).first() if asked_by else None
    new_link = submission_link_create(
        institution=institution,
        created_by=created_by,
        days=notice.payload.get("days"),
        reason=reason,
        ip_address=notice.payload.get("ip_address"),
        now=now,
    )
    submission_link_mark_sent(new_link=new_link, recipients=to)
    context = {**new_link.context(), "greeting_name": greeting_name(institution=institution, to=to)}
    message = build_email("link", to=to, reply_to=reply_to(institution), context=context, language=institution.language)
    logger.info("Submission link %s for %d address(es) of %s", new_link.link.pk, len(to), institution.pk)
    return Send(message=message, recipients=to)


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


# --------------------------------------------------------------------------
# "Lost the link?"
# --------------------------------------------------------------------------
#
# The request is stored before the page answers: a LINK_REQUEST notice,
# written for every address alike (matched or not, so the page takes the same
# time and reveals nothing), in the request's own transaction. Its delivery
# (the outbox, on a worker) looks the address up and writes one
# SUBMISSION_LINK notice per served institution that has it on file, which
# the outbox then mails. With the broker down the request waits in the
# database and beat's outbox sweep queues it; with the database down the page
# answers 503 ("nothing was saved, try again"), never "sent".


def link_request_record(*, email: str, ip_address: str | None, request_id: str | None = None) -> int | None:
    """Store a "lost the link?" request (a LINK_REQUEST notice) and queue its delivery once stored.

    Returns the notice's id; None for an empty address, or when `request_id`
    was recorded before (a task of an older release delivered twice).
    """
    if not email_key(email):
        return None
    return notices.notice_write(
        kind=Notice.Kind.LINK_REQUEST,
        dedupe_key=f"link-request:{request_id or uuid.uuid4().hex}",
        now=timezone.now(),
        payload={"email": email, "ip_address": ip_address or ""},
    )


def _contacts_with_address(email: str) -> list[Contact]:
    """Contacts of served institutions whose address has this address's email_key."""
    key = email_key(email)
    if not key:
        return []
    # The database's case-insensitive match by the key only narrows the rows
    # down (PostgreSQL's UPPER() also matches look-alikes such as a dotless
    # ı); the decision is email_key's, the same key the page's rate limit
    # counts by, so no spelling reaches a contact outside that limit.
    return [
        contact
        for contact in Contact.objects.select_related("institution")
        .filter(institution__status__in=Institution.SERVED_STATUSES, email__iexact=key)
        .order_by("pk")
        if email_key(contact.email) == key
    ]


def _answer_dedupe_key(*, request_notice_id: int, contact_id: int) -> str:
    return f"link-request:{request_notice_id}:contact:{contact_id}"


def link_request_notice_write(*, notice: Notice, now: dt.datetime) -> Skip:
    """The outbox's sender of a LINK_REQUEST: write a link notice for each contact with the address, or say none has it.

    The link goes only to the address asked for, never to the other
    contacts. Each answer is its own SUBMISSION_LINK notice (dedupe key
    naming this request and the contact), queued once this transaction
    commits; the request closes as superseded by them, or as cancelled when
    no served institution has the address on file. Either way nothing is
    mailed for the request itself.
    """
    email = notice.payload.get("email", "")
    ip_address = notice.payload.get("ip_address") or None
    contacts = _contacts_with_address(email)
    if not contacts:
        return Skip(
            state=Notice.State.CANCELLED, reason="No served institution has this address on file: nothing sent."
        )
    answers = []
    for contact in contacts:
        answer = _link_notice(
            institution=contact.institution,
            dedupe_key=_answer_dedupe_key(request_notice_id=notice.pk, contact_id=contact.pk),
            recipients=[contact.email],
            reason="request",
            ip_address=ip_address,
            to=contact.email,
            now=now,
        )
        # Committed with the request's close or not at all (the outbox's transaction), so never twice.
        answer.save(force_insert=True)
        answers.append(answer.pk)

    def queue_answers() -> None:
        for answer_id in answers:
            jobs.job_enqueue_on_commit(jobs.DELIVER_NOTICE, args=(answer_id,), robust=True)

    count = len(contacts)
    return Skip(
        state=Notice.State.SUPERSEDED,
        reason=f"Answered: a submission link for {count} institution{'' if count == 1 else 's'} "
        f"(a notice of its own each).",
        closed_with=queue_answers,
    )


def link_request_answers(*, request_notice_id: int) -> list[int]:
    """The ids of the SUBMISSION_LINK notices a LINK_REQUEST wrote."""
    return list(
        Notice.objects.filter(
            kind=Notice.Kind.SUBMISSION_LINK, dedupe_key__startswith=f"link-request:{request_notice_id}:contact:"
        )
        .order_by("pk")
        .values_list("pk", flat=True)
    )


# --------------------------------------------------------------------------
# Many at once (after a bulk import)
# --------------------------------------------------------------------------


def link_batch_create(*, institution_ids: list[int], created_by=None, now: dt.datetime | None = None) -> LinkBatch:
    """Write one submission-link notice per institution, LINK_BULK_PER_SECOND apart, and queue their delivery.

    Each notice's first attempt is due at its place in the line (and its
    task is queued with that countdown), so neither the tasks nor a sweep
    or run of outbox_deliver_due sends faster than the rate. Dedupe key
    "link-batch:<batch>:<institution>": one notice per institution per
    batch. A refused send is retried by the outbox; nobody to mail closes
    the notice as cancelled at delivery.
    """
    now = now or timezone.now()
    rate = max(float(settings.LINK_BULK_PER_SECOND), 0.1)
    institutions = list(
        Institution.objects.filter(pk__in=set(institution_ids))
        .order_by("pk")
        .prefetch_related(
            models.Prefetch(
                "contacts",
                queryset=Contact.objects.filter(receives_reminders=True).order_by("pk"),
                to_attr="reminder_contacts",
            )
        )
    )
    with transaction.atomic():
        batch = LinkBatch.objects.create(created_by=created_by, created_at=now)
        notices_ = Notice.objects.bulk_create(
            _link_notice(
                institution=institution,
                dedupe_key=f"link-batch:{batch.pk}:{institution.pk}",
                recipients=contact_emails(institution),
                reason="bulk",
                created_by=created_by,
                now=now,
                not_before=now + dt.timedelta(seconds=position / rate),
            )
            for position, institution in enumerate(institutions)
        )
        LinkBatchItem.objects.bulk_create(
            LinkBatchItem(batch=batch, institution_id=n.institution_id, notice=n) for n in notices_
        )
        for position, notice in enumerate(notices_):
            jobs.job_enqueue_on_commit(jobs.DELIVER_NOTICE, args=(notice.pk,), countdown=position / rate, robust=True)
    return batch


def link_batch_item_notice_id(*, item_id: int) -> int | None:
    """The notice of a batch item (for a task queued by an older release, which named the item)."""
    return LinkBatchItem.objects.filter(pk=item_id).values_list("notice_id", flat=True).first()


def link_batch_progress(*, batch: LinkBatch) -> dict[str, int]:
    """How many of the batch's notices are in each state (every state present, 0 when none)."""
    counts = dict(
        batch.items.order_by()
        .values_list("notice__state")
        .annotate(n=models.Count("pk"))
        .values_list("notice__state", "n")
    )
    return {state: counts.get(state, 0) for state in LinkBatchItem.PROGRESS_LABELS}


def link_batch_problems(*, batch: LinkBatch, limit: int = 200):
    """The batch's items not sent (cancelled, superseded, failed) or waiting to retry, by institution name."""
    waiting = models.Q(notice__state=Notice.State.PENDING, notice__attempts__gt=0)
    closed = models.Q(notice__state__in=(Notice.State.CANCELLED, Notice.State.SUPERSEDED, Notice.State.FAILED))
    return (
        batch.items.filter(waiting | closed)
        .select_related("institution", "notice")
        .order_by("institution__name")[:limit]
    )
