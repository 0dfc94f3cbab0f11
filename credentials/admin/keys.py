"""Admin pages of keys, submission links and the audit log: read-only, written by services (reminders: reminders.py)."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from credentials.admin import pages
from credentials.admin.common import STAFF_CSS, ViewOnlyAdmin, link_state_badge
from credentials.days import institution_today
from credentials.expressions import urgency_order
from credentials.models import (
    KEY_STATUSES_BY_URGENCY,
    SECRET_FIELDS,
    AuditEvent,
    CD2Credential,
    SubmissionLink,
    secret_fields_of,
)
from credentials.services.staff import REVEAL_PERMISSION


@admin.register(CD2Credential)
class CD2CredentialAdmin(ViewOnlyAdmin):
    # Only non-secret columns: the list and the page never decrypt (see get_queryset).
    list_display = (
        "hint",
        "institution",
        "state",
        "expires_on",
        "short_expiry",
        "source",
        "submitted_at",
        "last_verdict",
    )
    list_filter = ("status", "source", "region", "key_type")
    list_select_related = ("institution",)
    search_fields = ("institution__name", "institution__slug", "hint")
    date_hierarchy = "expires_on"
    fieldsets = (
        ("Key", {"fields": ("institution", "hint", "region", "key_name", "key_type", "expires_on", "short_expiry")}),
        ("Status", {"fields": ("state", "status_changed_at", "status_reason", "pending_reason")}),
        (
            "Check against CD2",
            {"fields": ("last_verified_at", "last_verdict", "last_verification", "verification_attempts")},
        ),
        (
            "Where it came from",
            {
                "fields": (
                    "source",
                    "submitted_at",
                    "submitted_by",
                    "submitted_by_email",
                    "created_by",
                    "submission_link",
                )
            },
        ),
    )
    # Every field shown is read-only: a key is never edited, only superseded.
    readonly_fields = tuple(name for _, options in fieldsets for name in options["fields"])

    @admin.display(description="Expiry chosen")
    def short_expiry(self, obj: CD2Credential) -> str:
        # The customer confirmed an expiry under validators.SHORT_EXPIRY_MONTHS.
        return "short expiry" if obj.is_short_expiry() else "—"

    change_form_template = "admin/credentials/cd2credential/change_form.html"

    class Media:
        css = STAFF_CSS

    def get_queryset(self, request):
        # client_id and secret are decrypted when loaded; deferring them means
        # no admin page ever holds them (the reveal view loads them itself).
        return (
            super()
            .get_queryset(request)
            .defer(*SECRET_FIELDS)
            .select_related("institution", "created_by", "submission_link__institution")
        )

    @admin.display(description="State", ordering=urgency_order("status", KEY_STATUSES_BY_URGENCY))
    def state(self, obj: CD2Credential) -> str:
        return obj.state_label(institution_today(obj.institution, timezone.now()))

    def get_urls(self):
        def reveal(request, object_id):
            return pages.reveal_view(request, self, object_id)

        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("<path:object_id>/reveal/", self.admin_site.admin_view(reveal), name=f"{prefix}_reveal"),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "can_reveal": request.user.has_perm(REVEAL_PERMISSION)}
        return super().change_view(request, object_id, form_url, extra_context)


@admin.register(SubmissionLink)
class SubmissionLinkAdmin(ViewOnlyAdmin):
    list_display = ("institution", "created_at", "created_by", "reason", "expires_at", "state_display", "sent_to")
    list_filter = ("reason", ("created_at", admin.DateFieldListFilter))
    list_select_related = ("institution", "created_by")
    search_fields = ("institution__name", "sent_to")
    # token_hash is not shown: it is useless to people and only helps an attacker.
    fields = (
        "institution",
        "created_at",
        "created_by",
        "reason",
        "sent_to",
        "expires_at",
        "used_at",
        "revoked_at",
        "superseded_by",
    )
    readonly_fields = fields

    @admin.display(description="State")
    def state_display(self, obj: SubmissionLink) -> str:
        return link_state_badge(obj)

    class Media:
        css = STAFF_CSS


@admin.register(AuditEvent)
class AuditEventAdmin(ViewOnlyAdmin):
    """Append-only: no add, change or delete here for anyone; the services write events."""

    list_display = ("created_at", "kind", "who", "institution", "credential_hint", "ip_address", "short_reason")
    list_filter = (
        "kind",
        ("actor", admin.RelatedOnlyFieldListFilter),
        ("institution", admin.RelatedOnlyFieldListFilter),
        ("created_at", admin.DateFieldListFilter),
    )
    search_fields = ("actor_username", "actor_label", "institution__name", "reason")
    date_hierarchy = "created_at"
    fields = (
        "created_at",
        "kind",
        "actor",
        "actor_username",
        "actor_label",
        "institution",
        "credential",
        "ip_address",
        "reason",
        "detail",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related("actor", "institution", "credential")
            .defer(*secret_fields_of("credential"))
        )

    @admin.display(description="Who", ordering="actor_username")
    def who(self, obj: AuditEvent) -> str:
        # The username stored on the event: it outlives a renamed account.
        return obj.actor_username or obj.actor_label or "system"

    @admin.display(description="Key")
    def credential_hint(self, obj: AuditEvent) -> str:
        if not obj.credential_id:
            return "—"
        url = reverse("admin:credentials_cd2credential_change", args=[obj.credential_id])
        return format_html('<a href="{}">{}</a>', url, obj.credential.hint)

    @admin.display(description="Reason")
    def short_reason(self, obj: AuditEvent) -> str:
        return obj.reason if len(obj.reason) <= 80 else obj.reason[:79] + "…"
