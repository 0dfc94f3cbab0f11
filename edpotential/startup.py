"""What a web, worker or beat process checks before it does any work.

gunicorn and Celery run no Django system checks, so a process started with
the wrong FERNET_KEYS would serve and store keys under a key that cannot
read what is already stored. `edpotential/wsgi.py` and the worker_init and
beat_init signals (`edpotential/celery.py`) call this first.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from credentials.checks import check_fernet_keys, check_stored_values_decrypt


def encryption_keys_read_stored_values() -> None:
    """Raise ImproperlyConfigured unless FERNET_KEYS is valid and decrypts a sample of the stored values.

    The same checks as `manage.py check` (credentials.E001, credentials.W001),
    but the warning is fatal here: a process must not start on such keys.
    """
    try:
        problems = check_fernet_keys() + check_stored_values_decrypt()
    finally:
        # gunicorn --preload and Celery fork after this: no child may inherit this connection.
        connections.close_all()
    if problems:
        raise ImproperlyConfigured(
            "Refusing to start: "
            + " ".join(f"{problem.msg} {problem.hint or ''}".strip() for problem in problems)
            + f" ({', '.join(problem.id for problem in problems)})"
        )
