"""Production refuses to start on development fallbacks.

With DEBUG off, importing the settings raises ImproperlyConfigured naming each
missing or unsafe variable, so `manage.py`, gunicorn and Celery all stop.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.security.test_production_settings import manage, production_env

# Named in the issue: every one has a development fallback that must not reach production.
REQUIRED = ("SECRET_KEY", "FERNET_KEYS", "SITE_URL", "DATABASE_URL", "CACHE_URL", "CELERY_BROKER_URL", "EMAIL_URL")


def deploy_check(env) -> subprocess.CompletedProcess:
    return manage(env, "check", "--deploy", "--fail-level", "WARNING")


@pytest.mark.parametrize("name", REQUIRED)
def test_the_deploy_check_fails_naming_each_missing_production_variable(tmp_path, name):
    result = deploy_check(production_env(tmp_path, **{name: None}))
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert f"{name} is not set" in result.stderr


def test_an_empty_variable_counts_as_missing(tmp_path):
    result = deploy_check(production_env(tmp_path, CELERY_BROKER_URL=""))
    assert result.returncode != 0 and "CELERY_BROKER_URL is not set" in result.stderr


def test_every_missing_variable_is_named_at_once(tmp_path):
    result = deploy_check(production_env(tmp_path, DATABASE_URL=None, EMAIL_URL=None))
    assert "DATABASE_URL is not set" in result.stderr and "EMAIL_URL is not set" in result.stderr


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"SITE_URL": "http://registry.example.com"}, "SITE_URL must start with https://"),
        ({"ALLOWED_HOSTS": "*"}, 'ALLOWED_HOSTS must not contain "*"'),
        ({"ALLOWED_HOSTS": "registry.example.com,*"}, 'ALLOWED_HOSTS must not contain "*"'),
    ],
)
def test_the_deploy_check_fails_on_plain_http_or_any_host(tmp_path, overrides, named):
    result = deploy_check(production_env(tmp_path, **overrides))
    assert result.returncode != 0
    assert named in result.stderr


def test_development_keeps_its_fallbacks_and_allows_plain_http(tmp_path):
    env = production_env(tmp_path, DEBUG="true", SITE_URL="http://127.0.0.1:8000", ALLOWED_HOSTS="*")
    for name in REQUIRED:
        if name != "SITE_URL":
            env.pop(name)
    shown = manage(
        env,
        "shell",
        "-c",
        "from django.conf import settings as s; print(s.DATABASES['default']['ENGINE'], s.EMAIL_BACKEND)",
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split()[-2:] == [
        "django.db.backends.sqlite3",
        "django.core.mail.backends.console.EmailBackend",
    ]
