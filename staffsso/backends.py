"""mozilla-django-oidc's backend, fed from discovery and with our own ID token checks.

The library does the token request and the signature check against the
provider's JWKS (the key matched by `kid` and `alg`). What it does not do
(tokens.py says why it matters) is done here, on every token. The library's
`authenticate` (match users by email, create them) is not used: a person is
matched by issuer and subject, and whether they may sign in is a business
rule (staffsso.services), so the callback view calls `exchange_code` and
the services. The backend stays in AUTHENTICATION_BACKENDS because Django
reloads a signed-in user through the backend that signed them in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import requests
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import SuspiciousOperation
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from staffsso.config import SsoConfig, sso_config
from staffsso.discovery import ProviderMetadata, provider_metadata
from staffsso.tokens import TokenRefused, id_token_check

BACKEND_PATH = "staffsso.backends.StaffOIDCBackend"

# The library's settings, answered from our configuration and the discovery document.
_FIXED = {
    # The three providers we document sign ID tokens with RS256; the library refuses any other alg.
    "OIDC_RP_SIGN_ALGO": "RS256",
    "OIDC_RP_IDP_SIGN_KEY": None,
    "OIDC_USE_NONCE": True,
    "OIDC_USE_PKCE": True,
    "OIDC_PKCE_CODE_CHALLENGE_METHOD": "S256",
    "OIDC_VERIFY_SSL": True,
    "OIDC_PROXY": None,
    # Unsigned tokens ("alg": "none") never.
    "OIDC_ALLOW_UNSECURED_JWT": False,
    "OIDC_TOKEN_USE_BASIC_AUTH": False,
    "OIDC_AUTHENTICATION_CALLBACK_URL": "staffsso:callback",
    "OIDC_STORE_ACCESS_TOKEN": False,
    "OIDC_STORE_ID_TOKEN": False,
}


def library_setting(config: SsoConfig, metadata: ProviderMetadata, attr: str, *default):
    """What mozilla-django-oidc reads through get_settings, from our settings rather than its own names."""
    answers = {
        **_FIXED,
        "OIDC_OP_AUTHORIZATION_ENDPOINT": metadata.authorization_endpoint,
        "OIDC_OP_TOKEN_ENDPOINT": metadata.token_endpoint,
        "OIDC_OP_USER_ENDPOINT": metadata.userinfo_endpoint,
        "OIDC_OP_JWKS_ENDPOINT": metadata.jwks_uri,
        "OIDC_RP_CLIENT_ID": config.client_id,
        "OIDC_RP_CLIENT_SECRET": config.client_secret,
        "OIDC_RP_SCOPES": config.scopes,
        "OIDC_TIMEOUT": config.timeout,
    }
    if attr in answers:
        return answers[attr]
    if default:
        return default[0]
    raise KeyError(attr)


class ExchangeFailed(Exception):
    """The provider refused the code or refresh token, or could not be reached: `reason` says which."""

    def __init__(self, reason: str, *, refused: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        # True: the provider answered no (invalid_grant ...); False: no usable answer.
        self.refused = refused


@dataclass(frozen=True)
class ProviderTokens:
    """What a token response gave us; `claims` are the checked ID token's. Never logged, never audited."""

    claims: dict
    refresh_token: str
    access_token: str

    def __repr__(self) -> str:
        return f"ProviderTokens(sub={self.claims.get('sub')!r})"


class StaffOIDCBackend(OIDCAuthenticationBackend):
    def __init__(self, *args, **kwargs) -> None:
        # The library's __init__ reads its settings at once and fails without
        # them; with SSO off this backend must load and answer nothing.
        self.UserModel = get_user_model()
        self._config: SsoConfig | None = None
        self._metadata: ProviderMetadata | None = None

    def _load(self) -> None:
        if self._config is None:
            self._config = sso_config()
            self._metadata = provider_metadata(issuer=self._config.issuer, timeout=self._config.timeout)
            self.OIDC_OP_TOKEN_ENDPOINT = self._metadata.token_endpoint
            self.OIDC_OP_USER_ENDPOINT = self._metadata.userinfo_endpoint
            self.OIDC_OP_JWKS_ENDPOINT = self._metadata.jwks_uri
            self.OIDC_RP_CLIENT_ID = self._config.client_id
            self.OIDC_RP_CLIENT_SECRET = self._config.client_secret
            self.OIDC_RP_SIGN_ALGO = _FIXED["OIDC_RP_SIGN_ALGO"]
            self.OIDC_RP_IDP_SIGN_KEY = None

    def get_settings(self, attr, *args):
        self._load()
        return library_setting(self._config, self._metadata, attr, *args)

    def authenticate(self, request, **kwargs):
        # Never through django.contrib.auth.authenticate(): see the module docstring.
        return None

    def get_user(self, user_id):
        # The library's get_user skips the is_active check; Django's does not.
        return ModelBackend.get_user(self, user_id)

    # -- the flows ----------------------------------------------------------

    def _token_request(self, payload: dict) -> dict:
        try:
            return self.get_token(payload)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            error = ""
            if exc.response is not None:
                try:
                    error = str(exc.response.json().get("error", ""))[:60]
                except ValueError:
                    error = ""
            refused = status in (400, 401) and error in ("invalid_grant", "invalid_client", "unauthorized_client")
            raise ExchangeFailed(f"token endpoint answered {status} {error}".strip(), refused=refused) from None
        except (requests.RequestException, ValueError) as exc:
            raise ExchangeFailed(f"token endpoint unreachable: {type(exc).__name__}", refused=False) from None

    def _checked_claims(self, id_token: str, **expect) -> dict:
        try:
            # The library: the signature, with the JWKS key of this kid and alg (its
            # verify_token would add a nonce check that fails on refreshed tokens;
            # ours below covers the nonce).
            claims = self.get_payload_data(id_token, self.retrieve_matching_jwk(id_token))
        except (SuspiciousOperation, ValueError, KeyError) as exc:
            raise TokenRefused(f"signature or format: {exc}"[:200]) from None
        except requests.RequestException as exc:
            raise ExchangeFailed(f"JWKS unreachable: {type(exc).__name__}", refused=False) from None
        except Exception as exc:  # PyJWT's own errors (expired before our check, malformed ...)
            if type(exc).__module__.startswith("jwt"):
                raise TokenRefused(f"{type(exc).__name__}") from None
            raise
        # Ours: issuer, audience, azp, expiry, nonce, subject, auth_time (tokens.py).
        id_token_check(claims, issuer=self._config.issuer, client_id=self._config.client_id, now=time.time(), **expect)
        return claims

    def exchange_code(self, *, code: str, redirect_uri: str, code_verifier: str, nonce: str, auth_after=None):
        """The code for tokens (with the PKCE verifier); the ID token checked against this sign-in's nonce."""
        self._load()
        info = self._token_request(
            {
                "client_id": self._config.client_id,
                "client_secret": self._config.client_secret,
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": code_verifier,
            }
        )
        id_token = info.get("id_token")
        if not id_token:
            raise TokenRefused("no ID token in the token response")
        claims = self._checked_claims(id_token, nonce=nonce, auth_after=auth_after)
        return ProviderTokens(
            claims=claims, refresh_token=info.get("refresh_token") or "", access_token=info.get("access_token") or ""
        )

    def refresh(self, *, refresh_token: str, subject: str) -> ProviderTokens:
        """Ask the provider again for this person (refresh grant); refused when they are disabled or removed."""
        self._load()
        info = self._token_request(
            {
                "client_id": self._config.client_id,
                "client_secret": self._config.client_secret,
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
            }
        )
        claims = {"sub": subject}
        if info.get("id_token"):
            # A refreshed ID token carries no nonce (Core 12.2); it must still be ours and this person's.
            claims = self._checked_claims(info["id_token"], subject=subject)
        return ProviderTokens(
            claims=claims,
            refresh_token=info.get("refresh_token") or refresh_token,
            access_token=info.get("access_token") or "",
        )

    def userinfo(self, *, access_token: str, subject: str) -> dict:
        """Re-validation without a refresh token: the userinfo endpoint answers only for a live account."""
        self._load()
        if not self._metadata.userinfo_endpoint:
            raise ExchangeFailed("the provider has no userinfo endpoint and gave no refresh token", refused=True)
        try:
            response = requests.get(
                self._metadata.userinfo_endpoint,
                headers={"Authorization": f"Bearer {access_token}"},
                timeout=self._config.timeout,
            )
        except requests.RequestException as exc:
            raise ExchangeFailed(f"userinfo unreachable: {type(exc).__name__}", refused=False) from None
        if response.status_code in (401, 403):
            raise ExchangeFailed(f"userinfo answered {response.status_code}", refused=True)
        if response.status_code != 200:
            raise ExchangeFailed(f"userinfo answered {response.status_code}", refused=False)
        info = response.json()
        if info.get("sub") != subject:
            raise ExchangeFailed("userinfo names another person", refused=True)
        return info
