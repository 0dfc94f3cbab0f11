from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import HealthCheck, settings

# CI (.ci/run sets CI) fuzzes each target with 1,000 examples; a local run
# uses fewer to stay quick. SECURITY.md records the CI figures.
settings.register_profile(
    "ci",
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    print_blob=True,
)
settings.register_profile(
    "dev",
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True)
def private_cache(settings):
    """A fresh in-memory cache per test: rate-limit counters of other test runs sharing var/cache stay out."""
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": f"security-{uuid.uuid4()}"}
    }
