from __future__ import annotations

from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "api"
    verbose_name = "Pipeline API"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # credentials never imports api: it sends key_events and keeps a table of
        # senders; the API listens and registers the webhook sender it owns here.
        from api import webhooks
        from credentials.models import Notice
        from credentials.outgoing import sender_register
        from credentials.services.lost_keys import lost_values_handler_register
        from credentials.signals import key_events

        key_events.connect(webhooks.webhook_notices_write, dispatch_uid="api.webhooks.webhook_notices_write")
        sender_register(Notice.Kind.WEBHOOK, webhooks.webhook_notice_write)
        # FERNET_KEYS lost for good (manage.py mark_keys_lost): how an unreadable signing secret is forgotten.
        lost_values_handler_register("api.ServiceAccount", webhooks.webhook_secrets_forget)
