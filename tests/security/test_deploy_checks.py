"""`check --deploy` refuses each development stand-in by name, even when the variable is set to it explicitly."""

from __future__ import annotations

import pytest

from edpotential.checks import development_stand_ins
from tests.security.test_production_settings import manage, production_env

# Production's shape: the check finds nothing in it (the baseline every case below changes once).
PRODUCTION = {
    "email_backend": "django.core.mail.backends.smtp.EmailBackend",
    "databases": {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "registry"}},
    "broker_url": "redis://redis.example.com:6379/0",
    "caches": {"default": {"BACKEND": "edpotential.cache.FailOpenRedisCache", "LOCATION": "redis://r:6379/1"}},
    "site_url": "https://registry.example.com",
    "cd2_api_url": "https://api-gateway.instructure.com",
}

STAND_INS = [
    ("email_backend", "django.core.mail.backends.console.EmailBackend", "edpotential.E001", "EMAIL_URL"),
    ("email_backend", "django.core.mail.backends.locmem.EmailBackend", "edpotential.E001", "EMAIL_URL"),
    ("databases", {"default": {"ENGINE": "django.db.backends.sqlite3"}}, "edpotential.E002", "DATABASE_URL"),
    ("broker_url", "filesystem://", "edpotential.E003", "CELERY_BROKER_URL"),
    ("broker_url", "memory://", "edpotential.E003", "CELERY_BROKER_URL"),
    (
        "caches",
        {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}},
        "edpotential.E004",
        "CACHE_URL",
    ),
    (
        "caches",
        {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        "edpotential.E004",
        "CACHE_URL",
    ),
    ("site_url", "https:", "edpotential.E005", "SITE_URL"),
    ("site_url", "http://registry.example.com", "edpotential.E005", "SITE_URL"),
    ("cd2_api_url", "http://api-gateway.instructure.com", "edpotential.E006", "CD2_API_URL"),
]


def test_production_settings_have_no_stand_in():
    assert development_stand_ins(**PRODUCTION) == []


@pytest.mark.parametrize(("setting", "value", "check_id", "variable"), STAND_INS)
def test_each_stand_in_is_an_error_naming_its_variable(setting, value, check_id, variable):
    (error,) = development_stand_ins(**{**PRODUCTION, setting: value})
    assert error.id == check_id and error.is_serious()
    assert variable in error.msg


def test_the_deploy_check_command_names_every_stand_in_set_explicitly(tmp_path):
    env = production_env(
        tmp_path,
        EMAIL_URL="consolemail://",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        CELERY_BROKER_URL="filesystem://",
        CACHE_URL="dummycache://",
        SITE_URL="https://",
        CD2_API_URL="http://api-gateway.instructure.com",
    )
    result = manage(env, "check", "--deploy")
    assert result.returncode != 0
    for check_id in ("E001", "E002", "E003", "E004", "E005", "E006"):
        assert f"edpotential.{check_id}" in result.stderr, check_id
    for variable in ("EMAIL_URL", "DATABASE_URL", "CELERY_BROKER_URL", "CACHE_URL", "SITE_URL", "CD2_API_URL"):
        assert variable in result.stderr
