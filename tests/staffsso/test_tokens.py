"""The ID token checks we add on top of mozilla-django-oidc (staffsso/tokens.py), one claim at a time.

The first test shows why they exist: the library alone, given a correctly
signed token for another client and another issuer, returns its claims.
"""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from staffsso.tokens import LEEWAY_SECONDS, TokenRefused, id_token_check

ISSUER = "https://idp.example"
CLIENT = "cd2-registry"
NOW = 1_900_000_000


def claims(**changes) -> dict:
    base = {"iss": ISSUER, "aud": CLIENT, "sub": "ada", "iat": NOW - 5, "exp": NOW + 3600, "nonce": "n0nce"}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def check(token_claims, **kwargs):
    id_token_check(token_claims, issuer=ISSUER, client_id=CLIENT, now=NOW, **kwargs)


def test_the_library_alone_accepts_a_token_for_another_client_from_another_issuer(settings):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(
        {"iss": "https://evil.example", "aud": "someone-else", "sub": "x", "exp": int(time.time()) + 60},
        key,
        algorithm="RS256",
    )
    backend = OIDCAuthenticationBackend.__new__(OIDCAuthenticationBackend)
    backend.OIDC_RP_SIGN_ALGO = "RS256"
    settings.OIDC_ALLOW_UNSECURED_JWT = False

    accepted = backend._verify_jws(token, key.public_key())

    assert (accepted["iss"], accepted["aud"]) == ("https://evil.example", "someone-else")
    with pytest.raises(TokenRefused, match="issuer"):
        id_token_check(accepted, issuer=ISSUER, client_id=CLIENT, now=time.time())


def test_a_good_token_passes():
    check(claims(), nonce="n0nce")
    check(claims(aud=[CLIENT, "other"], azp=CLIENT), nonce="n0nce")


@pytest.mark.parametrize(
    ("token_claims", "kwargs", "why"),
    [
        (claims(iss="https://idp.example/"), {}, "issuer"),
        (claims(iss=None), {}, "issuer"),
        (claims(aud="other"), {}, "audience"),
        (claims(aud=["other", "more"]), {}, "audience"),
        (claims(aud=[CLIENT, "other"]), {}, "authorized party"),
        (claims(azp="other"), {}, "authorized party"),
        (claims(exp=NOW - LEEWAY_SECONDS - 1), {}, "expired"),
        (claims(exp=None), {}, "exp or iat"),
        (claims(iat=NOW + LEEWAY_SECONDS + 10), {}, "future"),
        (claims(sub=""), {}, "subject"),
        (claims(), {"subject": "bob"}, "another person"),
        (claims(), {"nonce": "other"}, "nonce"),
        (claims(nonce=None), {"nonce": "n0nce"}, "nonce"),
        (claims(), {"auth_after": NOW}, "auth_time"),
        (claims(auth_time=NOW - 3600), {"auth_after": NOW - 10}, "did not ask"),
    ],
)
def test_each_claim_that_is_wrong_refuses_the_token(token_claims, kwargs, why):
    with pytest.raises(TokenRefused, match=why):
        check(token_claims, **kwargs)


def test_a_fresh_sign_in_passes_the_auth_time_check():
    check(claims(auth_time=NOW - 3), auth_after=NOW - 10)
