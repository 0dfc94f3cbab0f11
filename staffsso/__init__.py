"""Staff sign-in with the company's identity provider: OpenID Connect single sign-on.

Built on mozilla-django-oidc (pinned in requirements.txt): a small,
well-kept library that does the authorization code flow with PKCE, state
and nonce, and checks an ID token's signature against the provider's JWKS.
Chosen over django-allauth, which would bring its own account, email and
login pages for a job that is one provider and the admin; we need none of
them. What the library leaves out, this package adds (tokens.py says why):
discovery from the issuer, the ID token's issuer, audience, expiry and
nonce checked by us as well, groups to roles, multi-factor from `amr`,
re-validation of a session at the provider, break-glass and the audit.

Off unless OIDC_ISSUER is set (settings, "Staff sign-in with the company's
identity provider"): then nothing here answers and the admin signs in with
a password and a one-time code as before.
"""
