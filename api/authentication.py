"""DRF plumbing for the API: bearer tokens, scopes, per-account rate limits.

Every failure to authenticate (no token, unknown, malformed, revoked,
expired, inactive account, address not allowed) is the same 401 with the
same body (api/problems.py), so a caller learns nothing about a token it
does not hold. Each token refused counts against the caller's address
(REFUSALS_PER_ADDRESS, in the shared cache, before any view or throttle runs):
past the limit every bearer token from that address, good ones too, is a
429 with Retry-After until the window ends, so guessing stops there.
"""

from __future__ import annotations

from django_ratelimit.core import get_usage
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed, Throttled
from rest_framework.permissions import BasePermission
from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle

from api.models import ApiToken, ServiceAccount
from api.services import api_token_authenticate
from requestinfo import client_ip

# Requests per minute from one address without a valid token (the schema).
ANONYMOUS_RATE = "60/min"
# Tokens refused per address: a pipeline with a stale token fails loudly long
# before this; past it the address waits out the window (10 minutes at most).
REFUSALS_PER_ADDRESS = "20/10m"
REFUSALS_GROUP = "api.refused_bearer"


def _address(group, request) -> str:
    return client_ip(request) or ""


def invalid_tokens(request, *, count: bool) -> dict:
    """The address's refused tokens in this window (`count`: one more); fails open without a cache."""
    usage = get_usage(request, group=REFUSALS_GROUP, key=_address, rate=REFUSALS_PER_ADDRESS, increment=count)
    return usage or {"count": 0, "limit": 1, "time_left": 0}


class ApiTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer cd2r_…`: request.user is the ServiceAccount, request.auth the ApiToken."""

    def authenticate(self, request):
        header = get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        usage = invalid_tokens(request._request, count=False)
        if usage["count"] >= usage["limit"]:
            raise Throttled(wait=max(usage["time_left"], 1))
        scheme, _, plaintext = header.partition(" ")
        token = None
        if scheme.lower() == "bearer":
            token = api_token_authenticate(plaintext=plaintext.strip(), ip_address=client_ip(request._request))
        if token is None:
            invalid_tokens(request._request, count=True)
            raise AuthenticationFailed()
        return (token.account, token)

    def authenticate_header(self, request) -> str:
        # Present, so DRF answers 401 (not 403) when authentication fails.
        return 'Bearer realm="cd2-registry"'


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = ApiTokenAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An API token from create_api_token."}


class HasScope(BasePermission):
    """The token carries the view's `required_scope`."""

    message = "This token does not have the scope this endpoint needs."
    code = "insufficient_scope"

    def has_permission(self, request, view) -> bool:
        return isinstance(request.auth, ApiToken) and request.auth.has_scope(view.required_scope)


class AccountRateThrottle(SimpleRateThrottle):
    """ServiceAccount.rate_per_minute requests per minute per account, counted in the shared cache."""

    scope = "api_account"

    def __init__(self) -> None:
        # The rate is the account's, known only once the request is authenticated.
        self.rate = None

    def allow_request(self, request, view) -> bool:
        account = request.user
        if not isinstance(account, ServiceAccount):
            return True
        self.rate = f"{account.rate_per_minute}/min"
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request, view) -> str:
        return self.cache_format % {"scope": self.scope, "ident": request.user.pk}


class AnonymousRateThrottle(AnonRateThrottle):
    rate = ANONYMOUS_RATE

    def get_ident(self, request) -> str:
        # The project's one reading of the client address (X-Forwarded-For only behind our proxy).
        return client_ip(request._request) or ""
