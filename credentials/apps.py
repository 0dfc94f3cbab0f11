from __future__ import annotations

from django.apps import AppConfig
from django.contrib.auth.signals import user_logged_in, user_login_failed


class CredentialsConfig(AppConfig):
    name = "credentials"
    verbose_name = "Canvas Data 2 keys"

    def ready(self) -> None:
        from credentials import (
            checks,  # noqa: F401  (registers the system checks)
            middleware,
        )
        from credentials.models import Notice
        from credentials.outgoing import sender_register
        from credentials.services import (
            alerts,
            audit,
            digest,
            links,
            metrics,
            owners,
            pending,
            reminders,
            submission,
            verification,
        )
        from credentials.signals import gateway_request, key_checked, notice_failed

        # The senders credentials owns (api registers the webhook's): the outbox imports none of them.
        kinds = Notice.Kind
        sender_register(kinds.REMINDER, reminders.reminder_notice_write)
        sender_register(kinds.OWNER_SUMMARY, owners.owner_summary_write)
        sender_register(kinds.STAFF_DIGEST, digest.staff_digest_write)
        sender_register(kinds.RECEIPT, submission.receipt_notice_write)
        sender_register(kinds.KEY_INVALID, verification.key_invalid_notice_write)
        sender_register(kinds.KEY_REJECTED, pending.key_rejected_notice_write)
        sender_register(kinds.KEY_CONFLICT, submission.key_conflict_notice_write)
        sender_register(kinds.SUBMISSION_LINK, links.link_notice_write)
        sender_register(kinds.LINK_REQUEST, links.link_request_notice_write)
        # Staff alerts go in groups: one message per chat channel, one mail per staff member.
        window = alerts.alert_group_window
        sender_register(
            kinds.STAFF_ALERT, alerts.staff_alert_chat_write, group_key=alerts.chat_group, group_window=window
        )
        sender_register(
            kinds.STAFF_ALERT_MAIL, alerts.staff_alert_mail_write, group_key=alerts.mail_group, group_window=window
        )
        notice_failed.connect(alerts.notice_failed_record, dispatch_uid="edp-alert-notice-failed")

        # The CD2 client's requests and checks, counted for /metrics.
        gateway_request.connect(metrics.gateway_request_record, dispatch_uid="edp-metrics-gateway-request")
        key_checked.connect(metrics.key_check_record, dispatch_uid="edp-metrics-key-checked")

        user_logged_in.connect(audit.audit_login, dispatch_uid="edp-audit-login")
        user_login_failed.connect(audit.audit_login_failed, dispatch_uid="edp-audit-login-failed")
        user_logged_in.connect(middleware.time_zone_on_login, dispatch_uid="edp-staff-time-zone")
