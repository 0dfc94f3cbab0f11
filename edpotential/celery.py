"""The Celery app: configured from Django settings under the CELERY_ namespace, logging through LOGGING."""

from __future__ import annotations

import logging
import os
from logging.config import dictConfig

from celery import Celery
from celery.signals import setup_logging
from django.conf import settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "edpotential.settings")

app = Celery("edpotential")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect
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
