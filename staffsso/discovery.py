"""The provider's endpoints, from its discovery document (/.well-known/openid-configuration).

mozilla-django-oidc wants each endpoint in a setting; reading them from the
issuer instead means one setting per deployment and no stale endpoint after
a provider moves one. The document must name the same issuer we were given
(OpenID Connect Discovery 1.0, section 4.3): otherwise an attacker who could
answer for the URL could name another issuer's tokens as ours.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

# Re-read once an hour: providers rotate signing keys (the JWKS is read at
# every sign-in anyway) and rarely move endpoints.
CACHE_SECONDS = 3600
_cache: dict[str, tuple[float, ProviderMetadata]] = {}
_lock = threading.Lock()


class ProviderUnavailable(Exception):
    """The provider could not be asked, or answered something unusable (the message says which, no secrets)."""


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str
    end_session_endpoint: str


def _is_loopback(url: str) -> bool:
    return urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")


def provider_metadata(*, issuer: str, timeout: float) -> ProviderMetadata:
    now = time.monotonic()
    with _lock:
        cached = _cache.get(issuer)
        if cached and now - cached[0] < CACHE_SECONDS:
            return cached[1]
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        response = requests.get(url, timeout=timeout)
        response.raise_for_status()
        document = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise ProviderUnavailable(f"discovery at {url} failed: {type(exc).__name__}") from None
    if document.get("issuer", "").rstrip("/") != issuer.rstrip("/"):
        raise ProviderUnavailable(f"discovery at {url} names another issuer: {document.get('issuer')!r}")
    try:
        metadata = ProviderMetadata(
            issuer=document["issuer"],
            authorization_endpoint=document["authorization_endpoint"],
            token_endpoint=document["token_endpoint"],
            jwks_uri=document["jwks_uri"],
            userinfo_endpoint=document.get("userinfo_endpoint", ""),
            end_session_endpoint=document.get("end_session_endpoint", ""),
        )
    except KeyError as exc:
        raise ProviderUnavailable(f"discovery at {url} lacks {exc.args[0]}") from None
    endpoints = (metadata.authorization_endpoint, metadata.token_endpoint, metadata.jwks_uri)
    # HTTPS everywhere but on loopback (the tests' provider): tokens and keys travel here.
    if not all(u.startswith("https://") or _is_loopback(u) for u in endpoints):
        raise ProviderUnavailable(f"discovery at {url} gives an endpoint that is not https")
    with _lock:
        _cache[issuer] = (now, metadata)
    return metadata


def provider_metadata_forget() -> None:
    """Drop the cached documents (tests start a provider per module, each on its own port)."""
    with _lock:
        _cache.clear()
