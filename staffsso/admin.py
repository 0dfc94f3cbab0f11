"""Superusers' pages: who signed in with the provider, their provider sessions, and the break-glass accounts.

No group holds these models' permissions, so only superusers see them. No
token is ever shown: the provider sessions' tokens are not among the fields.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin

from credentials.admin.common import ViewOnlyAdmin
from safeadmin.lists import SafeFilterValuesMixin
from staffsso.models import BreakGlassAccount, ProviderSession, StaffIdentity
from staffsso.services import break_glass_set


@admin.register(StaffIdentity)
class StaffIdentityAdmin(ViewOnlyAdmin):
    list_display = ("email", "user", "roles", "last_sign_in_at", "last_seen_at", "deactivated_at")
    list_filter = ("deactivated_at",)
    search_fields = ("email", "subject")
    fields = ("user", "issuer", "subject", "email", "roles", "first_sign_in_at", "last_sign_in_at", "last_seen_at")


@admin.register(ProviderSession)
class ProviderSessionAdmin(ViewOnlyAdmin):
    list_display = ("identity", "started_at", "validated_at", "mfa_by_provider", "ended_at", "ended_reason")
    list_filter = ("mfa_by_provider",)
    # Never the refresh or access token.
    fields = ("user", "identity", "started_at", "validated_at", "unreachable_since", "mfa_by_provider", "ended_at")
    fields += ("ended_reason",)


class BreakGlassForm(forms.ModelForm):
    class Meta:
        model = BreakGlassAccount
        fields = ("user", "reason")

    def clean_user(self):
        user = self.cleaned_data["user"]
        if not user.is_superuser:
            raise forms.ValidationError("Only a superuser can be a break-glass account.")
        if StaffIdentity.objects.filter(user=user).exists():
            raise forms.ValidationError("This account signs in with the identity provider; choose a local one.")
        return user


@admin.register(BreakGlassAccount)
class BreakGlassAccountAdmin(SafeFilterValuesMixin, admin.ModelAdmin):
    """Marking and unmarking go through the service: audited."""

    form = BreakGlassForm
    list_display = ("user", "reason", "marked_at", "marked_by")
    raw_id_fields = ("user",)

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def save_model(self, request, obj, form, change) -> None:
        break_glass_set(user=obj.user, marked=True, by=request.user, reason=obj.reason)

    def delete_model(self, request, obj) -> None:
        break_glass_set(user=obj.user, marked=False, by=request.user, reason="unmarked in the admin")

    def delete_queryset(self, request, queryset) -> None:
        for obj in queryset.select_related("user"):
            self.delete_model(request, obj)
