"""Sessions signed in with the identity provider: ended when the provider stops vouching, or when they are too old."""

from __future__ import annotations

from django.contrib import auth

from requestinfo import client_ip
from staffsso.config import sso_enabled
from staffsso.services import Verdict, provider_session_check
from staffsso.session import PROVIDER_SESSION_KEY, provider_session_id


class SsoSessionMiddleware:
    """For an SSO session: its age (OIDC_SESSION_HOURS) and, every OIDC_REVALIDATE_MINUTES, the provider asked again.

    A session the provider no longer vouches for is signed out before the
    view runs, so the request meets the sign-in page. With SSO turned off,
    sessions made by it end too: nothing would re-validate them.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        session_id = provider_session_id(request)
        if session_id is not None and request.user.is_authenticated:
            if not sso_enabled():
                auth.logout(request)
            elif provider_session_check(session_id=session_id, ip_address=client_ip(request)) == Verdict.ENDED:
                auth.logout(request)
        elif session_id is not None:
            request.session.pop(PROVIDER_SESSION_KEY, None)
        return self.get_response(request)
