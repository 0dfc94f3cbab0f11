"""What a Django session says about SSO: its provider session, and the re-authentication it asked for.

Read by the admin (is the second factor the provider's? may a Secret be
shown?) and by this package's views and middleware.
"""

from __future__ import annotations

import time

from django.http import HttpRequest
from django.urls import reverse
from django.utils.http import urlencode

from staffsso.config import sso_enabled
from staffsso.models import ProviderSession

# The id of this browser's ProviderSession row (the tokens stay in that row).
PROVIDER_SESSION_KEY = "staffsso_session"
# A re-authentication in flight: {"state": ..., "started": unix time, "next": url}.
REAUTH_KEY = "staffsso_reauth"


def provider_session_id(request: HttpRequest) -> int | None:
    session = getattr(request, "session", None)
    value = session.get(PROVIDER_SESSION_KEY) if session is not None else None
    return value if isinstance(value, int) else None


def is_sso_session(request: HttpRequest) -> bool:
    """Signed in with the identity provider (SSO on): re-authentication goes to the provider, not a password."""
    return sso_enabled() and provider_session_id(request) is not None


def mfa_by_provider(request: HttpRequest) -> bool:
    """The provider's amr showed a second factor at this sign-in, and OIDC_REQUIRE_MFA let it count."""
    session_id = provider_session_id(request)
    if not sso_enabled() or session_id is None:
        return False
    return ProviderSession.objects.filter(pk=session_id, ended_at__isnull=True, mfa_by_provider=True).exists()


def reauth_url(next_url: str) -> str:
    """Where a signed-in SSO user goes to prove it is them again (prompt=login, max_age=0), then back to next_url."""
    return f"{reverse('staffsso:reauth')}?{urlencode({'next': next_url})}"


def reauth_started(request: HttpRequest, *, state: str, next_url: str) -> None:
    request.session[REAUTH_KEY] = {"state": state, "started": time.time(), "next": next_url}
