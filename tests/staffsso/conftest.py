from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def private_cache(settings):
    """Lockout counters and rate limits of other test runs (var/cache) stay out."""
    import uuid

    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": f"sso-{uuid.uuid4()}"}
    }
