"""Services that change keys, links and the audit log.

Views, admin actions, commands and tasks are thin doors into these
functions, so every door behaves the same.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from credentials.models import AuditEvent, CD2Credential, SubmissionLink, hash_token
from credentials.validators import CleanKey
from institutions.models import Institution

# --------------------------------------------------------------------------
# Audit
# --------------------------------------------------------------------------


def audit_record(
    *,
    kind: str,
    actor=None,
    actor_label: str = "",
    institution: Institution | None = None,
    credential: CD2Credential | None = None,
    ip_address: str | None = None,
    reason: str = "",
    detail: dict | None = None,
) -> AuditEvent:
    """Append one audit event. `detail` must never hold a secret or a full Client ID."""
    if credential is not None and institution is None:
        institution = credential.institution
    return AuditEvent.objects.create(
        kind=kind,
        actor=actor if getattr(actor, "pk", None) else None,
        actor_label=actor_label[:254],
        institution=institution,
        credential=credential,
        ip_address=ip_address or None,
        reason=reason,
        detail=detail or {},
    )


# --------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------


def credential_create(
    *,
    institution: Institution,
    key: CleanKey,
    source: str,
    status: str = CD2Credential.Status.PENDING_VERIFICATION,
    verification: str = "",
    submitted_by: str = "",
    submitted_by_email: str = "",
    created_by=None,
    submission_link: SubmissionLink | None = None,
    key_name: str = "",
    key_type: str = CD2Credential.KeyType.INSTITUTIONAL,
    now: dt.datetime | None = None,
) -> CD2Credential:
    """Store a validated key; as ACTIVE it supersedes the institution's current key.

    `key` comes from validators.validate_key_input, so no door can store a
    key that skipped validation.
    """
    now = now or timezone.now()
    with transaction.atomic():
        credential = CD2Credential.objects.create(
            institution=institution,
            client_id=key.client_id,
            secret=key.secret,
            region=key.region,
            hint=key.hint,
            key_name=key_name or settings.CD2_KEY_NAME,
            key_type=key_type,
            expires_on=key.expires_on,
            status=CD2Credential.Status.PENDING_VERIFICATION,
            source=source,
            submitted_at=now,
            submitted_by=submitted_by,
            submitted_by_email=submitted_by_email,
            created_by=created_by,
            submission_link=submission_link,
            status_changed_at=now,
        )
        if status == CD2Credential.Status.ACTIVE:
            credential_activate(credential=credential, verification=verification, now=now)
        elif status != CD2Credential.Status.PENDING_VERIFICATION:
            raise ValueError(f"A new key starts active or pending_verification, not {status}.")
        elif verification:
            credential.last_verification = verification[:200]
            credential.save(update_fields=["last_verification"])
    return credential


def credential_activate(
    *, credential: CD2Credential, verification: str = "", now: dt.datetime | None = None
) -> CD2Credential:
    """Make this key the institution's active key; the previous one becomes history.

    The institution row is locked first, so two activations for one
    institution run one after the other instead of tripping the
    one-active-key constraint.
    """
    now = now or timezone.now()
    with transaction.atomic():
        Institution.objects.select_for_update().filter(pk=credential.institution_id).first()
        CD2Credential.objects.filter(
            institution_id=credential.institution_id, status=CD2Credential.Status.ACTIVE
        ).exclude(pk=credential.pk).update(
            status=CD2Credential.Status.SUPERSEDED,
            status_changed_at=now,
            status_reason=f"Superseded by key {credential.hint} on {now:%Y-%m-%d}",
        )
        credential.status = CD2Credential.Status.ACTIVE
        credential.status_changed_at = now
        credential.status_reason = ""
        fields = ["status", "status_changed_at", "status_reason"]
        if verification:
            credential.last_verified_at = now
            credential.last_verification = verification[:200]
            fields += ["last_verified_at", "last_verification"]
        credential.save(update_fields=fields)
    return credential


def credential_set_status(
    *, credential: CD2Credential, status: str, reason: str = "", now: dt.datetime | None = None
) -> CD2Credential:
    """Move a key to revoked or invalid (never back): the row stays as history."""
    if status not in (CD2Credential.Status.REVOKED, CD2Credential.Status.INVALID):
        raise ValueError("Use credential_activate to make a key active.")
    credential.status = status
    credential.status_changed_at = now or timezone.now()
    credential.status_reason = reason[:500]
    credential.save(update_fields=["status", "status_changed_at", "status_reason"])
    return credential


# --------------------------------------------------------------------------
# Submission links
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class NewLink:
    """A link just made: the token exists only here, the database keeps its hash."""

    link: SubmissionLink
    token: str

    @property
    def url(self) -> str:
        return settings.SITE_URL + reverse("credentials:submit", kwargs={"token": self.token})

    def __repr__(self) -> str:
        return f"NewLink(link={self.link.pk})"


def submission_link_create(
    *,
    institution: Institution,
    created_by=None,
    days: int | None = None,
    reason: str = "staff",
    now: dt.datetime | None = None,
) -> NewLink:
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
    )
    audit_record(
        kind=AuditEvent.Kind.LINK_CREATED,
        actor=created_by,
        actor_label="" if created_by else f"system ({reason})",
        institution=institution,
        detail={"link_id": link.pk, "expires_at": link.expires_at.isoformat(), "reason": reason},
    )
    return NewLink(link=link, token=token)


def submission_link_get(*, token: str, now: dt.datetime | None = None) -> SubmissionLink | None:
    """The usable link for this token, or None (unknown, expired, revoked or used alike)."""
    if not token or len(token) > 100:
        return None
    link = SubmissionLink.objects.select_related("institution").filter(token_hash=hash_token(token)).first()
    if link is None or not link.is_usable(now):
        return None
    return link
