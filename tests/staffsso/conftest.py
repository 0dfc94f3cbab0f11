from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def private_cache(settings):
    """Lockout counters and rate limits of other test runs (var/cache) stay out."""
    import uuid

    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": f"sso-{uuid.uuid4()}"}
    }


@pytest.fixture
def role_groups(django_db_blocker):
    """The staff groups of credentials/migrations/0002_roles.py, made again where a transactional test flushed them."""
    import importlib

    from django.contrib.auth.models import Group, Permission

    roles = importlib.import_module("credentials.migrations.0002_roles").ROLES
    for name, perms in roles.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.set(
            [
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
                for app_label, codename in (perm.split(".") for perm in perms)
            ]
        )
