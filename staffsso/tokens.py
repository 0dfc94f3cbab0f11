"""What an ID token must say, checked by us on top of mozilla-django-oidc.

Why: tried against a loopback provider, mozilla-django-oidc 5.0.2 accepted
an ID token issued for another client (it decodes with verify_aud off) and
one naming another issuer (it never compares `iss`); its nonce check passes
when neither side has a nonce; and only PyJWT's default guards `exp`. An ID
token minted by the same provider for another application, or replayed
later, would then sign a person in here. So every token, from a sign-in or
a re-validation, goes through `id_token_check` after the library has
checked the signature (tests/staffsso/test_tokens.py holds each case,
tests/staffsso/test_sso_browser.py the real provider's).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

# Clocks differ by a little between us and the provider.
LEEWAY_SECONDS = 60


class TokenRefused(Exception):
    """An ID token we must not trust; the message says which check failed (never the token)."""


def id_token_check(
    claims: Mapping,
    *,
    issuer: str,
    client_id: str,
    now: float,
    nonce: str | None = None,
    auth_after: float | None = None,
    subject: str | None = None,
) -> None:
    """Raise TokenRefused unless `claims` are for us, from our issuer, current and (if given) for this request.

    nonce: the one we sent with this sign-in (required then). auth_after:
    the person must have signed in at the provider after this instant
    (re-authentication with prompt=login and max_age). subject: the person
    this session belongs to (re-validation and re-authentication).
    """
    if claims.get("iss") != issuer:
        raise TokenRefused("issuer is not ours")
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else list(audience or [])
    if client_id not in audiences:
        raise TokenRefused("audience is not our client")
    # OpenID Connect Core 3.1.3.7: with several audiences azp must be us; when present it must be us.
    if ("azp" in claims or len(audiences) > 1) and claims.get("azp") != client_id:
        raise TokenRefused("authorized party is not our client")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int | float) or not isinstance(iat, int | float):
        raise TokenRefused("exp or iat missing")
    if exp <= now - LEEWAY_SECONDS:
        raise TokenRefused("expired")
    if iat > now + LEEWAY_SECONDS:
        raise TokenRefused("issued in the future")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise TokenRefused("no subject")
    if subject is not None and claims["sub"] != subject:
        raise TokenRefused("another person's token")
    if nonce is not None:
        token_nonce = claims.get("nonce")
        if not isinstance(token_nonce, str) or not hmac.compare_digest(token_nonce, nonce):
            raise TokenRefused("nonce does not match this sign-in")
    if auth_after is not None:
        auth_time = claims.get("auth_time")
        if not isinstance(auth_time, int | float):
            raise TokenRefused("no auth_time for a fresh sign-in")
        if auth_time < auth_after - LEEWAY_SECONDS:
            raise TokenRefused("the provider did not ask the person to sign in again")
