"""Settings for a bench run: the project's production settings, served over plain HTTP on loopback.

The bench sets DEBUG=false, DATABASE_URL (a throwaway database), FERNET_KEYS,
SECRET_KEY and EMAIL_URL (the SMTP sink) in the environment before Django
starts; everything below only undoes what needs HTTPS or a real client
address, and adds the floor view and the floor admin (bench/urls.py).
"""

from __future__ import annotations

from edpotential.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"

# gunicorn and the test client talk plain HTTP on 127.0.0.1: no redirect to
# HTTPS. Cookies stay Secure and __Host- prefixed; neither wrk nor the test
# client enforces that.
SECURE_SSL_REDIRECT = False
SECURE_HSTS_SECONDS = 0

# No collectstatic in a bench: the manifest storage would refuse every
# {% static %} of the admin.
STORAGES = {
    **STORAGES,  # noqa: F405
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# Every request of a load test comes from 127.0.0.1, so the per-IP rate
# limits of the public page would refuse all but the first few. As behind the
# production proxy, each request names its client in X-Forwarded-For (a
# made-up address, see bench/wrk_post.lua): the rate limiting still runs, with
# its cache round trips, for every request.
BEHIND_TRUSTED_PROXY = True

# A queue of this run's own, so a bench never takes (or purges) another's tasks.
CELERY_TASK_DEFAULT_QUEUE = env.str("BENCH_QUEUE", default="bench")  # noqa: F405

# WhiteNoise warns on every process when STATIC_ROOT does not exist.
STATIC_ROOT = VAR_DIR / "static"  # noqa: F405
STATIC_ROOT.mkdir(parents=True, exist_ok=True)

# Rate-limit counters of one run must not leak into the next (the made-up
# client addresses repeat from run to run): a cache key prefix of its own.
CACHES["default"]["KEY_PREFIX"] = CELERY_TASK_DEFAULT_QUEUE  # noqa: F405
