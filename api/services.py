"""The API's rules: issuing and checking tokens, what an account may see, key reads and sync reports.

Doors (the views, the admin, the create_api_token command) call these. A key
read ends in credentials.services.staff.credential_handoff_record, the one
writer of hand-off audit events; a sync report of auth_failed or forbidden
queues the usual key check (credentials.services.verification via the
verify_credential task), which alone decides whether the key is invalid.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import secrets
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from api.models import ApiToken, Scope, ServiceAccount, SyncReport
from credentials.days import institution_today
from credentials.models import AuditEvent, CD2Credential, hash_token
from credentials.selectors import current_key, institutions_with_key_summary
from credentials.services import jobs, metrics
from credentials.services.audit import audit_record
from credentials.services.keys import credential_check_request, credential_mark_pulled
from credentials.services.staff import RevealedKey, credential_handoff_record
from edpotential.logging import mask_secrets
from institutions.models import Institution

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "cd2r_"  # noqa: S105 (a label, not a secret)
# 32 random bytes: 256 bits, 43 URL-safe characters.
TOKEN_BYTES = 32
_TOKEN_SHAPE = re.compile(r"\Acd2r_[a-z0-9]{8}_[A-Za-z0-9_-]{43}\Z")
DEFAULT_TOKEN_DAYS = 90
# A token's last use (last_used_at, last_used_ip) is written at most this often:
# "used in the last minute" is all staff need, and a read must not be a write.
TOKEN_USE_RECORDED_EVERY = dt.timedelta(minutes=1)
MAX_TOKEN_DAYS = 730
# One pipeline failing in a loop must not turn into a burst of checks against
# the CD2 gateway: at most one queued check per key in this window.
SYNC_CHECK_DEBOUNCE_SECONDS = 300
# What a sync report's outcome asks of the registry: a verdict-like failure
# is checked against CD2; "error" is the pipeline's own trouble.
CHECK_OUTCOMES = (SyncReport.Outcome.AUTH_FAILED, SyncReport.Outcome.FORBIDDEN)


class ApiRefused(Exception):
    """The API cannot do what was asked; `code` is the reason the client reads (views map it to a status)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    plaintext: str

    def __repr__(self) -> str:  # never the plaintext in a traceback
        return f"IssuedToken(prefix={self.token.prefix!r})"


def _random_prefix() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return TOKEN_PREFIX + "".join(secrets.choice(alphabet) for _ in range(8))


def api_token_issue(
    *,
    account: ServiceAccount,
    scopes: list[str],
    expires_in_days: int = DEFAULT_TOKEN_DAYS,
    created_by=None,
    actor_label: str = "",
    ip_address: str | None = None,
    now: dt.datetime | None = None,
) -> IssuedToken:
    """A new token for `account`; the plaintext exists only in the returned value (show it once).

    Audited (token_issued) naming the account, the actor (`created_by`, or
    `actor_label` for a command) and the token's prefix, never the token.
    """
    if not scopes or any(scope not in Scope.values for scope in scopes):
        raise ApiRefused("invalid_scope", f"Scopes must be among: {', '.join(Scope.values)}.")
    if not 1 <= expires_in_days <= MAX_TOKEN_DAYS:
        raise ApiRefused("invalid_expiry", f"A token expires after 1 to {MAX_TOKEN_DAYS} days.")
    now = now or timezone.now()
    prefix = _random_prefix()
    plaintext = f"{prefix}_{secrets.token_urlsafe(TOKEN_BYTES)}"
    with transaction.atomic():
        token = ApiToken.objects.create(
            account=account,
            prefix=prefix,
            token_hash=hash_token(plaintext),
            scopes=sorted(set(scopes)),
            created_by=created_by if getattr(created_by, "pk", None) else None,
            created_at=now,
            expires_at=now + dt.timedelta(days=expires_in_days),
        )
        _token_audit(
            kind=AuditEvent.Kind.TOKEN_ISSUED,
            token=token,
            actor=created_by,
            actor_label=actor_label,
            ip_address=ip_address,
        )
    return IssuedToken(token=token, plaintext=plaintext)


def _token_audit(*, kind: str, token: ApiToken, actor, actor_label: str, ip_address: str | None) -> None:
    audit_record(
        kind=kind,
        actor=actor,
        actor_label=actor_label,
        ip_address=ip_address,
        detail={
            "account": token.account.name,
            "account_id": token.account_id,
            "token": token.prefix,
            "scopes": list(token.scopes),
        },
    )


def api_token_revoke(
    *,
    token: ApiToken,
    actor=None,
    actor_label: str = "",
    ip_address: str | None = None,
    now: dt.datetime | None = None,
) -> bool:
    """Revoke a token at once, audited (token_revoked); False when it already was (nothing audited)."""
    with transaction.atomic():
        revoked = bool(
            ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now or timezone.now())
        )
        if revoked:
            _token_audit(
                kind=AuditEvent.Kind.TOKEN_REVOKED,
                token=token,
                actor=actor,
                actor_label=actor_label,
                ip_address=ip_address,
            )
    return revoked


def api_token_authenticate(
    *, plaintext: str, ip_address: str | None, now: dt.datetime | None = None
) -> ApiToken | None:
    """The usable token for `plaintext` from `ip_address`, or None.

    Unknown, malformed, revoked, expired, of an inactive account, or from an
    address outside the account's allow-list: all None, so the caller
    answers them alike and a caller cannot tell a revoked token from a typo.
    """
    now = now or timezone.now()
    if not _TOKEN_SHAPE.match(plaintext or ""):
        return None
    token = (
        ApiToken.objects.select_related("account")
        .defer("account__webhook_secret")  # never decrypted per request
        .filter(token_hash=hash_token(plaintext))
        .first()
    )
    if token is None or not token.is_usable(now):
        return None
    if not token.account.ip_allowed(ip_address):
        logger.warning(
            "API token %s of %s refused from %s (not in its allow-list)", token.prefix, token.account, ip_address
        )
        return None
    _token_use_record(token=token, ip_address=ip_address, now=now)
    return token


def _token_use_record(*, token: ApiToken, ip_address: str | None, now: dt.datetime) -> None:
    """Write the token's last use (time and address) at most once per TOKEN_USE_RECORDED_EVERY.

    A pipeline reads many keys a minute: writing the row on each read made
    every read a write. The conditional UPDATE keeps it once a minute when
    several workers serve the same token at once. The audit of a key read
    is not this: it stays one row per read (api/views.py).
    """
    recorded_after = now - TOKEN_USE_RECORDED_EVERY
    if token.last_used_at is not None and token.last_used_at > recorded_after:
        return
    ApiToken.objects.filter(pk=token.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lte=recorded_after)
    ).update(last_used_at=now, last_used_ip=ip_address)


# --------------------------------------------------------------------------
# What an account sees
# --------------------------------------------------------------------------


def account_institutions(*, account: ServiceAccount) -> QuerySet[Institution]:
    if account.all_institutions:
        return Institution.objects.all()
    return Institution.objects.filter(service_accounts=account)


def account_keys(*, account: ServiceAccount, changed_since: dt.datetime | None = None):
    """The account's institutions with their key summary (one query, no join), oldest change first."""
    queryset = account_institutions(account=account)
    if changed_since is not None:
        # Inclusive: a poller passes the largest changed_at it has seen and
        # gets that row again rather than missing one changed in the same instant.
        queryset = queryset.filter(updated_at__gte=changed_since)
    return institutions_with_key_summary(queryset=queryset)


def _institution_for(*, account: ServiceAccount, slug: str) -> Institution:
    institution = account_institutions(account=account).filter(slug=slug).first()
    if institution is None:
        # The same answer for "no such institution" and "not yours".
        raise ApiRefused("institution_not_found", "No institution with this slug is visible to this token.")
    return institution


# --------------------------------------------------------------------------
# Key read
# --------------------------------------------------------------------------


def api_key_read(
    *, token: ApiToken, institution_slug: str, ip_address: str | None, today: dt.date | None = None
) -> RevealedKey:
    """The institution's active key for the pipeline, audited (kind handoff, naming the account and IP).

    Refused (ApiRefused) with: institution_not_found, no_key (never had one,
    or the last was revoked), key_pending (awaiting its first check),
    key_invalid (CD2 refused it), key_lost (FERNET_KEYS lost: a new key is
    asked for), key_expired (active, past its date).
    Each read is counted by outcome (metrics: cd2_api_key_reads_total).
    """
    try:
        key = _key_read(token=token, institution_slug=institution_slug, ip_address=ip_address, today=today)
    except ApiRefused as refusal:
        metrics.metric_count(metrics.API_KEY_READS, labels={"outcome": refusal.code})
        raise
    metrics.metric_count(metrics.API_KEY_READS, labels={"outcome": "served"})
    return key


def _key_read(*, token: ApiToken, institution_slug: str, ip_address: str | None, today: dt.date | None) -> RevealedKey:
    institution = _institution_for(account=token.account, slug=institution_slug)
    today = today or institution_today(institution, timezone.now())
    active = current_key(institution=institution, statuses=(CD2Credential.Status.ACTIVE,))
    if active is None:
        newest = current_key(
            institution=institution,
            statuses=(
                CD2Credential.Status.PENDING_VERIFICATION,
                CD2Credential.Status.INVALID,
                CD2Credential.Status.LOST,
            ),
        )
        if newest is not None and newest.status == CD2Credential.Status.PENDING_VERIFICATION:
            raise ApiRefused("key_pending", "The institution's newest key is waiting for its check against CD2.")
        if newest is not None and newest.status == CD2Credential.Status.LOST:
            raise ApiRefused(
                "key_lost", "The registry can no longer read the institution's key; a new one is asked for."
            )
        if newest is not None:
            raise ApiRefused("key_invalid", "The institution's newest key was refused by CD2; a new one is needed.")
        raise ApiRefused("no_key", "The institution has no active CD2 key.")
    if active.expires_on < today:
        raise ApiRefused("key_expired", f"The institution's key expired on {active.expires_on:%Y-%m-%d}.")
    return credential_handoff_record(
        credential_id=active.pk,
        actor_label=f"API: {token.account.name}",
        ip_address=ip_address,
        detail={"via": "api", "account_id": token.account.pk, "token": token.prefix},
    )


# --------------------------------------------------------------------------
# Sync reports
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncResult:
    report: SyncReport
    active_key_id: int | None


def _clean_detail(detail: str, *, credential: CD2Credential) -> str:
    """The pipeline's words, without this key's Secret or Client ID or anything else secret-looking."""
    text = (detail or "")[:2000]
    for value in (credential.secret, credential.client_id):
        if value:
            text = text.replace(value, "[masked]")
    return mask_secrets(text)[:500]


def api_sync_report(
    *,
    token: ApiToken,
    institution_slug: str,
    key_id: int,
    outcome: str,
    detail: str = "",
    ip_address: str | None = None,
    now: dt.datetime | None = None,
) -> SyncResult:
    """Record what the pipeline saw with a key.

    ok: the key's last_pulled_at. auth_failed or forbidden with the active
    key: a check against CD2 is queued after commit (at most one per key
    every SYNC_CHECK_DEBOUNCE_SECONDS); the check, not this report, decides
    whether the key is invalid. A report about an older key changes nothing
    but is kept; the answer names the active key to fetch instead.

    The debounce is the reports themselves (a report that queued a check
    within the window), read with the key's row locked: it holds whether or
    not the cache (Redis) is up, and two reports arriving together queue one
    check.
    """
    now = now or timezone.now()
    institution = _institution_for(account=token.account, slug=institution_slug)
    credential = CD2Credential.objects.filter(pk=key_id, institution=institution).first()
    if credential is None:
        raise ApiRefused("key_not_found", "This institution has no key with this key_id.")
    is_active = credential.status == CD2Credential.Status.ACTIVE
    with transaction.atomic():
        check = is_active and outcome in CHECK_OUTCOMES and _sync_check_due(credential=credential, now=now)
        report = SyncReport.objects.create(
            account=token.account,
            institution=institution,
            credential=credential,
            outcome=outcome,
            detail=_clean_detail(detail, credential=credential),
            check_queued=bool(check),
            ip_address=ip_address,
            created_at=now,
        )
        if outcome == SyncReport.Outcome.OK:
            credential_mark_pulled(credential=credential, now=now)
        if check:
            # Stored with the report: with the broker down the task is lost and the hourly sweep queues it again.
            credential_check_request(credential=credential, now=now)
            jobs.job_enqueue_on_commit(jobs.VERIFY_CREDENTIAL, args=(credential.pk,), robust=True)
    active = credential if is_active else current_key(institution=institution, statuses=(CD2Credential.Status.ACTIVE,))
    return SyncResult(report=report, active_key_id=active.pk if active else None)


def _sync_check_due(*, credential: CD2Credential, now: dt.datetime) -> bool:
    """No report queued a check of this key within SYNC_CHECK_DEBOUNCE_SECONDS (call in a transaction)."""
    CD2Credential.objects.select_for_update().without_secrets().filter(pk=credential.pk).first()
    since = now - dt.timedelta(seconds=SYNC_CHECK_DEBOUNCE_SECONDS)
    return not SyncReport.objects.filter(credential=credential, check_queued=True, created_at__gt=since).exists()
