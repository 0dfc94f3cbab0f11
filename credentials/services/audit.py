"""The audit log: one function appends to it, and nothing edits or deletes an event."""

from __future__ import annotations

from credentials.models import AuditEvent, CD2Credential
from edpotential.logging import mask_secrets
from institutions.models import Institution
from requestinfo import client_ip


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
    """Append one audit event. `detail` must never hold a secret or a full Client ID.

    The reason and every text in `detail` are masked as logs are (a URL's
    query string and user name, anything secret-looking), a second net under
    that rule: a reason is typed by staff, a detail may quote an error.
    """
    if credential is not None and institution is None:
        institution = credential.institution
    actor = actor if getattr(actor, "pk", None) else None
    return AuditEvent.objects.create(
        kind=kind,
        actor=actor,
        actor_username=actor.get_username() if actor else "",
        actor_label=actor_label[:254],
        institution=institution,
        credential=credential,
        ip_address=ip_address or None,
        reason=mask_secrets(reason),
        detail=_masked(detail or {}),
    )


def _masked(value):
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(item) for item in value]
    return value


# --------------------------------------------------------------------------
# Sign-ins (connected to Django's auth signals in CredentialsConfig.ready)
# --------------------------------------------------------------------------


def _is_web_request(request) -> bool:
    # The test client's force_login() and login() build a bare HttpRequest
    # with no method: that is not somebody signing in.
    return request is not None and getattr(request, "method", None) is not None


# The backend of a sign-in with the identity provider: staffsso records those
# itself (kind sso_login, with the provider's subject and the MFA proof).
SSO_BACKEND = "staffsso.backends.StaffOIDCBackend"


def audit_login(sender, request, user, **kwargs) -> None:
    if not _is_web_request(request) or getattr(user, "backend", "") == SSO_BACKEND:
        return
    device = getattr(user, "otp_device", None)
    audit_record(
        kind=AuditEvent.Kind.LOGIN,
        actor=user,
        ip_address=client_ip(request),
        detail={"second_factor": type(device).__name__ if device else None},
    )


def audit_login_failed(sender, credentials, request=None, **kwargs) -> None:
    if not _is_web_request(request):
        return
    username = str((credentials or {}).get("username", ""))[:150]
    audit_record(
        kind=AuditEvent.Kind.LOGIN_FAILED,
        actor_label=username,
        ip_address=client_ip(request),
        reason=kwargs.get("reason", "wrong username or password"),
        detail={"locked_out": bool(getattr(request, "axes_locked_out", False))},
    )
