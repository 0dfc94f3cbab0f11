"""The SSO settings, read at call time (tests and deployments change them), and the group-to-role rule."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

# Our roles: the staff groups made by credentials/migrations/0002_roles.py, and superuser.
SUPERUSER = "Superuser"
ROLE_GROUPS = ("Viewer", "Customer success", "Data engineer")
ROLES = (*ROLE_GROUPS, SUPERUSER)


def sso_enabled() -> bool:
    return bool(settings.OIDC_ISSUER)


def parse_group_roles(text: str) -> dict[str, str]:
    """ "cd2-viewers:Viewer, cd2-admins:Superuser" -> {group: role}; a group name may itself hold colons."""
    mapping: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        group, sep, role = item.rpartition(":")
        group, role = group.strip(), role.strip()
        if not sep or not group:
            raise ImproperlyConfigured(f'OIDC_GROUP_ROLES: "{item}" is not "provider group:Role".')
        if role not in ROLES:
            raise ImproperlyConfigured(f'OIDC_GROUP_ROLES: "{role}" is not a role; roles are {", ".join(ROLES)}.')
        mapping[group] = role
    return mapping


@dataclass(frozen=True)
class SsoConfig:
    issuer: str
    client_id: str
    client_secret: str
    provider_name: str
    scopes: str
    allowed_domains: tuple[str, ...]
    groups_claim: str
    group_roles: dict[str, str]
    require_mfa: bool
    mfa_amr_values: frozenset[str]
    session_seconds: int
    revalidate_seconds: int
    deactivate_after_days: int
    timeout: float


def sso_config() -> SsoConfig:
    """The settings as one value; ImproperlyConfigured naming what is missing when SSO is on but incomplete."""
    missing = [
        name
        for name in ("OIDC_CLIENT_ID", "OIDC_CLIENT_SECRET", "OIDC_ALLOWED_EMAIL_DOMAINS", "OIDC_GROUP_ROLES")
        if not getattr(settings, name)
    ]
    if missing:
        raise ImproperlyConfigured(f"OIDC_ISSUER is set, so these are required too: {', '.join(missing)}.")
    return SsoConfig(
        issuer=settings.OIDC_ISSUER.rstrip("/"),
        client_id=settings.OIDC_CLIENT_ID,
        client_secret=settings.OIDC_CLIENT_SECRET,
        provider_name=settings.OIDC_PROVIDER_NAME,
        scopes=settings.OIDC_SCOPES,
        allowed_domains=tuple(d.lower().lstrip("@") for d in settings.OIDC_ALLOWED_EMAIL_DOMAINS),
        groups_claim=settings.OIDC_GROUPS_CLAIM,
        group_roles=parse_group_roles(settings.OIDC_GROUP_ROLES),
        require_mfa=settings.OIDC_REQUIRE_MFA,
        mfa_amr_values=frozenset(settings.OIDC_MFA_AMR_VALUES),
        session_seconds=settings.OIDC_SESSION_HOURS * 3600,
        revalidate_seconds=settings.OIDC_REVALIDATE_MINUTES * 60,
        deactivate_after_days=settings.OIDC_DEACTIVATE_AFTER_DAYS,
        timeout=settings.OIDC_TIMEOUT_SECONDS,
    )
