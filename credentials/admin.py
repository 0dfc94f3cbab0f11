from __future__ import annotations

from django.contrib import admin

from credentials.models import CD2Credential


@admin.register(CD2Credential)
class CD2CredentialAdmin(admin.ModelAdmin):
    # Only non-secret columns: the list and the form never decrypt.
    list_display = ("institution", "hint", "status", "expires_on", "source", "submitted_at")
    list_filter = ("status", "source", "region")
    list_select_related = ("institution",)
    fields = ("institution", "hint", "region", "status", "expires_on", "source", "submitted_at", "submitted_by")
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).defer("client_id", "secret")

    def has_add_permission(self, request) -> bool:
        return False
