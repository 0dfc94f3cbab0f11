"""Celery tasks of SSO: thin doors into staffsso.services."""

from __future__ import annotations

from celery import shared_task

from staffsso import services

DEACTIVATE_UNSEEN = "staffsso.tasks.deactivate_unseen_staff"


@shared_task(name=DEACTIVATE_UNSEEN)
def deactivate_unseen_staff() -> int:
    return services.identities_deactivate_unseen()
