"""The data pipeline's API: service accounts, their tokens, and /api/v1/ (keys, key reads, sync reports).

Built on Django REST framework (with drf-spectacular for the OpenAPI schema)
rather than django-ninja: DRF's pluggable authentication, permission and
throttle classes give us a bearer-token scheme, per-token scopes and a
per-account, cache-backed rate limit as small classes on one base view
(api/authentication.py), its exception handler hook gives RFC 9457 problem
details for every error (api/problems.py), and drf-spectacular documents
all of it at /api/v1/schema/, bearer auth included. Doors only: the rules
live in api/services.py and the credentials services they call.
"""
