"""The rules of staff sign-in with the identity provider.

Who may sign in (a verified address in an allowed domain, a mapped group,
a second factor when required, an account not deactivated here), which
roles they get (exactly those their groups map to, nothing local added),
how a session stays valid (re-asked at the provider every few minutes, at
most OIDC_SESSION_HOURS), the daily deactivation of people the provider no
longer shows us, and break-glass password sign-ins. Every decision is an
audit event naming the provider's subject and the reason; no token ever
reaches the audit log, a log line or an exception message.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from credentials.mail.messages import build_email
from credentials.models import AuditEvent, Notice
from credentials.outgoing import Send, Skip
from credentials.services import health
from credentials.services.audit import audit_record
from credentials.services.notices import notice_write
from staffsso.backends import ExchangeFailed, StaffOIDCBackend
from staffsso.config import ROLE_GROUPS, SUPERUSER, SsoConfig, sso_config, sso_enabled
from staffsso.discovery import ProviderUnavailable
from staffsso.models import BreakGlassAccount, ProviderSession, StaffIdentity
from staffsso.tokens import TokenRefused

logger = logging.getLogger(__name__)

GOOGLE_ISSUER = "https://accounts.google.com"
# The beat entry (settings.CELERY_BEAT_SCHEDULE) the daily deactivation records its runs under.
JOB_SSO_DEACTIVATE = "sso-deactivate-unseen"


class Refusal:
    """Why a sign-in with the provider was refused (AuditEvent reason codes)."""

    BAD_TOKEN = "bad_token"  # noqa: S105  (a reason code, not a password)
    BAD_STATE = "bad_state"
    PROVIDER_ERROR = "provider_error"
    WRONG_DOMAIN = "wrong_domain"
    NO_GROUP = "no_group"
    NO_MFA = "no_mfa"
    DEACTIVATED = "deactivated"
    ACCOUNT_CONFLICT = "account_conflict"
    REAUTH_MISMATCH = "reauth_mismatch"


# What the refused person reads (the audit log holds the technical detail).
REFUSAL_MESSAGES = {
    Refusal.NO_GROUP: "Your account is not in any group that gives access to the CD2 key registry. "
    "Ask your manager or the IT team for access; once they add you to the right group, sign in again.",
    Refusal.NO_MFA: "Your sign-in did not use multi-factor authentication, which this registry requires. "
    "Set up multi-factor authentication with your identity provider (or ask the IT team), then sign in again.",
    Refusal.WRONG_DOMAIN: "This account is not one of ours. Sign in with your work account.",
    Refusal.DEACTIVATED: "Your account here is deactivated. Ask a registry administrator to reactivate it.",
    Refusal.ACCOUNT_CONFLICT: "An account with your address already exists here and belongs to someone else. "
    "Ask a registry administrator.",
}
GENERIC_REFUSAL = "The sign-in could not be completed. Try again; if it keeps failing, tell the IT team the time."


class SsoRefused(Exception):
    """A sign-in refused; `reason` is a Refusal code, `detail` what the audit event keeps (no token)."""

    def __init__(self, reason: str, *, detail: str = "", subject: str = "", email: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.subject = subject
        self.email = email

    @property
    def message(self) -> str:
        return REFUSAL_MESSAGES.get(self.reason, GENERIC_REFUSAL)


def sso_refusal_record(*, refusal: SsoRefused, ip_address: str | None) -> None:
    config_issuer = settings.OIDC_ISSUER
    audit_record(
        kind=AuditEvent.Kind.SSO_REFUSED,
        actor_label=(refusal.email or refusal.subject)[:254],
        ip_address=ip_address,
        reason=refusal.reason,
        detail={"issuer": config_issuer, "subject": refusal.subject, "why": refusal.detail[:300]},
    )
    logger.info("SSO sign-in refused (%s) for subject %s: %s", refusal.reason, refusal.subject, refusal.detail)


# --------------------------------------------------------------------------
# Roles
# --------------------------------------------------------------------------


def roles_for(claims: dict, config: SsoConfig) -> tuple[list[str], list[str]]:
    """(our roles, the provider groups that gave them) for the groups claim; unmapped groups count for nothing."""
    groups = claims.get(config.groups_claim) or []
    if isinstance(groups, str):
        groups = [groups]
    matched = sorted({g for g in groups if isinstance(g, str) and g in config.group_roles})
    roles = sorted({config.group_roles[g] for g in matched})
    return roles, matched


def mfa_shown(claims: dict, config: SsoConfig) -> bool:
    amr = claims.get("amr") or []
    return isinstance(amr, list) and any(isinstance(v, str) and v in config.mfa_amr_values for v in amr)


def user_roles(user) -> list[str]:
    """What the user holds now: every group (a role or not), Superuser, and a marker for direct permissions."""
    held = sorted(user.groups.values_list("name", flat=True))
    if user.is_superuser:
        held.append(SUPERUSER)
    if user.user_permissions.exists():
        held.append("(permissions given directly)")
    return held


def _roles_apply(*, user, roles: list[str], why: str, subject: str, ip_address: str | None, groups=()) -> None:
    """Give `user` exactly `roles` (nothing else); audited when that changes what they hold."""
    before = user_roles(user)
    user.groups.set(Group.objects.filter(name__in=[r for r in roles if r in ROLE_GROUPS]))
    user.user_permissions.clear()
    user.is_superuser = SUPERUSER in roles
    user.is_staff = bool(roles)
    user.save(update_fields=["is_superuser", "is_staff"])
    after = user_roles(user)
    if before != after:
        audit_record(
            kind=AuditEvent.Kind.ROLE_CHANGED,
            actor=user,
            ip_address=ip_address,
            reason=why,
            detail={"subject": subject, "before": before, "after": after, "provider_groups": list(groups)},
        )


def identity_roles_enforce(*, identity: StaffIdentity) -> None:
    """Put back the roles the provider gave if anything here changed them since (never broadened locally)."""
    if user_roles(identity.user) != sorted(identity.roles):
        _roles_apply(
            user=identity.user,
            roles=identity.roles,
            why="changed here, not at the identity provider: set back to the provider's",
            subject=identity.subject,
            ip_address=None,
        )


# --------------------------------------------------------------------------
# Sign-in
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedIn:
    user: object
    identity: StaffIdentity
    mfa_by_provider: bool


def _email_check(claims: dict, config: SsoConfig, *, subject: str) -> str:
    email = str(claims.get("email") or "").strip().lower()
    refuse = lambda detail: SsoRefused(Refusal.WRONG_DOMAIN, detail=detail, subject=subject, email=email)  # noqa: E731
    if "@" not in email:
        raise refuse("the provider gave no email address")
    if claims.get("email_verified") is False:
        raise refuse("the provider says the address is not verified")
    domain = email.rsplit("@", 1)[1]
    if domain not in config.allowed_domains:
        raise refuse(f"domain {domain} is not in OIDC_ALLOWED_EMAIL_DOMAINS")
    hosted = claims.get("hd")
    # Google: a consumer account may carry a work address; only an account of
    # the Workspace (hd) is one of ours.
    if config.issuer == GOOGLE_ISSUER and not hosted:
        raise refuse("a Google account outside any Workspace (no hd claim)")
    if hosted is not None and str(hosted).lower() not in config.allowed_domains:
        raise refuse(f"Workspace domain {hosted} is not allowed")
    return email


def _user_for(*, email: str, subject: str):
    """The local user for a new identity: a new user named by the address, or the local one of that name and address."""
    User = get_user_model()
    existing = User._default_manager.filter(**{User.USERNAME_FIELD: email}).first()
    if existing is None:
        user = User._default_manager.create_user(email, email=email, is_staff=True)
        user.set_unusable_password()
        user.save(update_fields=["password"])
        return user
    if (existing.email or "").lower() == email and not StaffIdentity.objects.filter(user=existing).exists():
        return existing
    raise SsoRefused(Refusal.ACCOUNT_CONFLICT, detail="username taken by another account", subject=subject, email=email)


def sso_sign_in(*, claims: dict, ip_address: str | None, now: dt.datetime | None = None) -> SignedIn:
    """Decide on a person the provider vouched for (claims of a checked ID token); SsoRefused if they may not enter.

    A person who lost every mapped group loses every role here too, before the refusal.
    """
    config = sso_config()
    now = now or timezone.now()
    subject = claims["sub"]
    email = _email_check(claims, config, subject=subject)
    identity = StaffIdentity.objects.select_related("user").filter(issuer=config.issuer, subject=subject).first()
    roles, groups = roles_for(claims, config)
    if not roles:
        if identity is not None:
            with transaction.atomic():
                _roles_apply(
                    user=identity.user,
                    roles=[],
                    why="no mapped group at the identity provider",
                    subject=subject,
                    ip_address=ip_address,
                )
                StaffIdentity.objects.filter(pk=identity.pk).update(roles=[])
        raise SsoRefused(Refusal.NO_GROUP, detail="no group in OIDC_GROUP_ROLES", subject=subject, email=email)
    mfa = mfa_shown(claims, config)
    if config.require_mfa and not mfa:
        raise SsoRefused(
            Refusal.NO_MFA, detail=f"amr {claims.get('amr')!r} shows no second factor", subject=subject, email=email
        )
    with transaction.atomic():
        if identity is None:
            user = _user_for(email=email, subject=subject)
            identity = StaffIdentity.objects.create(
                user=user, issuer=config.issuer, subject=subject, email=email, first_sign_in_at=now
            )
        user = identity.user
        if not user.is_active:
            raise SsoRefused(Refusal.DEACTIVATED, detail="deactivated here", subject=subject, email=email)
        _roles_apply(
            user=user,
            roles=roles,
            why="groups at the identity provider",
            subject=subject,
            ip_address=ip_address,
            groups=groups,
        )
        StaffIdentity.objects.filter(pk=identity.pk).update(
            email=email, roles=roles, last_sign_in_at=now, last_seen_at=now, deactivated_at=None
        )
        identity.refresh_from_db()
        audit_record(
            kind=AuditEvent.Kind.SSO_LOGIN,
            actor=user,
            ip_address=ip_address,
            detail={
                "issuer": config.issuer,
                "subject": subject,
                "roles": roles,
                "amr": [v for v in (claims.get("amr") or []) if isinstance(v, str)][:10],
                "second_factor": "identity provider" if config.require_mfa else "one-time code here",
            },
        )
    return SignedIn(user=user, identity=identity, mfa_by_provider=config.require_mfa and mfa)


def provider_session_start(*, signed_in: SignedIn, refresh_token: str, access_token: str) -> ProviderSession:
    return ProviderSession.objects.create(
        user=signed_in.user,
        identity=signed_in.identity,
        mfa_by_provider=signed_in.mfa_by_provider,
        refresh_token=refresh_token,
        access_token=access_token,
    )


# --------------------------------------------------------------------------
# Keeping a session valid
# --------------------------------------------------------------------------


class Verdict:
    VALID = "valid"
    ENDED = "ended"


def provider_session_end(*, session: ProviderSession, reason: str, ip_address: str | None, audit: bool = True) -> None:
    ProviderSession.objects.filter(pk=session.pk, ended_at__isnull=True).update(
        ended_at=timezone.now(), ended_reason=reason[:200], refresh_token="", access_token=""
    )
    if audit:
        audit_record(
            kind=AuditEvent.Kind.SSO_SIGNED_OUT,
            actor=session.user,
            ip_address=ip_address,
            reason=reason[:200],
            detail={"issuer": session.identity.issuer, "subject": session.identity.subject},
        )


def provider_session_check(*, session_id: int, ip_address: str | None, now: dt.datetime | None = None) -> str:
    """VALID or ENDED for this request: the session's age, and the provider asked again when it is due.

    The provider refusing (the person disabled, removed, or their grant
    revoked) ends the session at once. The provider unreachable is given
    three intervals before the session ends: a short outage at the provider
    does not sign everybody out, a long one does.
    """
    config = sso_config()
    now = now or timezone.now()
    with transaction.atomic():
        session = (
            ProviderSession.objects.select_for_update()
            .select_related("identity", "user")
            .filter(pk=session_id, ended_at__isnull=True)
            .first()
        )
        if session is None:
            return Verdict.ENDED
        if now - session.started_at > dt.timedelta(seconds=config.session_seconds):
            provider_session_end(session=session, reason="session lifetime over", ip_address=ip_address, audit=False)
            return Verdict.ENDED
        if now - session.validated_at < dt.timedelta(seconds=config.revalidate_seconds):
            return Verdict.VALID
        subject = session.identity.subject
        try:
            client = StaffOIDCBackend()
            if session.refresh_token:
                tokens = client.refresh(refresh_token=session.refresh_token, subject=subject)
                session.refresh_token = tokens.refresh_token
            else:
                client.userinfo(access_token=session.access_token, subject=subject)
        except (ExchangeFailed, ProviderUnavailable, TokenRefused) as exc:
            refused = isinstance(exc, TokenRefused) or getattr(exc, "refused", False)
            grace = dt.timedelta(seconds=3 * config.revalidate_seconds)
            if refused or now - session.validated_at > grace:
                why = "the identity provider refused the session" if refused else "the identity provider unreachable"
                provider_session_end(session=session, reason=f"{why}: {exc}", ip_address=ip_address)
                return Verdict.ENDED
            logger.warning("SSO re-validation of subject %s failed, retried next request: %s", subject, exc)
            ProviderSession.objects.filter(pk=session.pk, unreachable_since__isnull=True).update(unreachable_since=now)
            return Verdict.VALID
        session.validated_at = now
        session.unreachable_since = None
        session.save(update_fields=["refresh_token", "validated_at", "unreachable_since"])
        StaffIdentity.objects.filter(pk=session.identity_id).update(last_seen_at=now)
        identity_roles_enforce(identity=session.identity)
    return Verdict.VALID


# --------------------------------------------------------------------------
# Leavers: the daily job
# --------------------------------------------------------------------------


def identities_deactivate_unseen(*, now: dt.datetime | None = None) -> int:
    """Deactivate users the provider has not vouched for in OIDC_DEACTIVATE_AFTER_DAYS; audited; the count."""
    now = now or timezone.now()
    cutoff = now - dt.timedelta(days=settings.OIDC_DEACTIVATE_AFTER_DAYS)
    count = 0
    # A run is recorded with SSO off too (nothing to do): /healthz watches that the job runs.
    with health.job_run(JOB_SSO_DEACTIVATE) as counts:
        stale = StaffIdentity.objects.select_related("user").filter(last_seen_at__lt=cutoff, user__is_active=True)
        if not sso_enabled():
            stale = stale.none()
        for identity in stale:
            with transaction.atomic():
                user = identity.user
                user.is_active = False
                user.save(update_fields=["is_active"])
                StaffIdentity.objects.filter(pk=identity.pk).update(deactivated_at=now)
                ProviderSession.objects.filter(user=user, ended_at__isnull=True).update(
                    ended_at=now, ended_reason="deactivated: not seen at the identity provider", refresh_token=""
                )
                audit_record(
                    kind=AuditEvent.Kind.DEACTIVATED,
                    actor=user,
                    actor_label="daily job: not seen at the identity provider",
                    reason=f"not seen at the identity provider for {settings.OIDC_DEACTIVATE_AFTER_DAYS} days",
                    detail={
                        "issuer": identity.issuer,
                        "subject": identity.subject,
                        "last_seen_at": identity.last_seen_at.isoformat(),
                    },
                )
                count += 1
        counts["deactivated"] = count
    return count


# --------------------------------------------------------------------------
# Break glass
# --------------------------------------------------------------------------


def break_glass_allowed(user) -> bool:
    """May this account sign in with a password while SSO is on: a marked superuser with an authenticator."""
    return (
        user.is_active
        and user.is_superuser
        and BreakGlassAccount.objects.filter(user=user).exists()
        and TOTPDevice.objects.filter(user=user, confirmed=True).exists()
    )


def break_glass_signed_in(*, user, ip_address: str | None) -> AuditEvent:
    """Audit a break-glass sign-in and mail every superuser about it (through the outbox)."""
    with transaction.atomic():
        event = audit_record(
            kind=AuditEvent.Kind.BREAK_GLASS,
            actor=user,
            ip_address=ip_address,
            reason="password sign-in while SSO is on",
        )
        notice_write(
            kind=Notice.Kind.BREAK_GLASS,
            dedupe_key=f"break-glass:{event.pk}",
            now=event.created_at,
            payload={"audit_event_id": event.pk},
        )
    return event


def break_glass_set(*, user, marked: bool, by, reason: str = "") -> None:
    """Mark or unmark a break-glass account; audited."""
    with transaction.atomic():
        if marked:
            BreakGlassAccount.objects.update_or_create(user=user, defaults={"reason": reason, "marked_by": by})
        else:
            BreakGlassAccount.objects.filter(user=user).delete()
        audit_record(
            kind=AuditEvent.Kind.BREAK_GLASS_SET,
            actor=by,
            reason=reason,
            detail={"user": user.get_username(), "break_glass": marked},
        )


def superuser_addresses() -> list[str]:
    User = get_user_model()
    return sorted(
        set(
            User._default_manager.filter(is_superuser=True, is_active=True)
            .exclude(email="")
            .values_list("email", flat=True)
        )
    )


def break_glass_notice_write(*, notice: Notice, now: dt.datetime) -> Send | Skip:
    """The outbox's sender of the break-glass alert: to every active superuser with an address."""
    event = AuditEvent.objects.filter(pk=notice.payload.get("audit_event_id")).first()
    recipients = superuser_addresses()
    if event is None or not recipients:
        return Skip(state=Notice.State.CANCELLED, reason="No superuser with an email address to tell.")
    message = build_email(
        "break-glass",
        to=recipients,
        context={
            "username": event.actor_username,
            "at": event.created_at,
            "ip_address": event.ip_address or "unknown",
            "audit_url": f"{settings.SITE_URL}/admin/credentials/auditevent/{event.pk}/change/",
        },
    )
    return Send(message=message, recipients=recipients)
