"""The Celery app: configured from Django settings under the CELERY_ namespace, logging through LOGGING."""

from __future__ import annotations

import logging
import os
from logging.config import dictConfig

from celery import Celery, signals
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "edpotential.settings")

logger = logging.getLogger(__name__)

app = Celery("edpotential")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.setup_logging.connect
def use_the_app_logging(*, loglevel: int | None = None, **kwargs) -> None:
    """Workers and beat log through settings.LOGGING, whose every handler masks secrets.

    With no receiver for this signal, Celery replaces the root logger's
    handlers with its own unfiltered one (worker_hijack_root_logger), and a
    worker would log in clear what the web process masks. `--loglevel` still
    sets the level.
    """
    dictConfig(settings.LOGGING)
    if loglevel:
        logging.getLogger().setLevel(loglevel)


@signals.worker_init.connect
def _worker_checks_encryption_keys(**kwargs) -> None:
    _refuse_to_start_on_unreadable_values("worker")


@signals.beat_init.connect
def _beat_checks_encryption_keys(**kwargs) -> None:
    _refuse_to_start_on_unreadable_values("beat")


def _refuse_to_start_on_unreadable_values(process: str) -> None:
    """Stop a worker or beat whose FERNET_KEYS cannot read the stored keys (see edpotential/startup.py)."""
    # Imported here, once Django is set up: this module is imported while the
    # settings load (edpotential/__init__.py), before any app is ready.
    from edpotential.startup import encryption_keys_read_stored_values

    try:
        encryption_keys_read_stored_values()
    except ImproperlyConfigured as exc:
        logger.critical("Celery %s refused to start: %s", process, exc)
        # Celery logs and swallows an Exception raised by a signal handler;
        # SystemExit is not one, so it stops the process with a non-zero status.
        raise SystemExit(f"Celery {process} refused to start: {exc}") from None
