"""Staff users: Django's user admin, except that a user with audit history is deactivated, never deleted.

The audit log must name who did what for ever (AuditEvent.actor is
PROTECT and keeps actor_username); deleting the user would orphan it.
Registered in place of django.contrib.auth's when StaffAdminConfig.ready
imports this module, after autodiscovery: importing django.contrib.auth.admin
from the site module would be an import circle (it registers on the site).
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.http import HttpResponseRedirect
from django.urls import reverse

from credentials.selectors import audit_events_by
from safeadmin.lists import SafeFilterValuesMixin
from staffsso.models import StaffIdentity


def _refusal(user, events: int) -> str:
    return (
        f"Cannot delete {user.get_username()}: {events} audit event(s) name them, and the audit log keeps "
        f"who did what for ever. Deactivate the account instead: untick \u201cActive\u201d below and save. "
        f"A deactivated user cannot sign in."
    )


User = get_user_model()


# What the identity provider's groups decide for a user who signs in with it
# (staffsso): shown, never edited here, so nothing local broadens a role.
ROLES_FROM_PROVIDER = ("is_staff", "is_superuser", "groups", "user_permissions")


class StaffUserAdmin(SafeFilterValuesMixin, UserAdmin):
    def get_readonly_fields(self, request, obj=None):
        fields = tuple(super().get_readonly_fields(request, obj))
        if obj is not None and StaffIdentity.objects.filter(user=obj).exists():
            fields += ROLES_FROM_PROVIDER
        return fields

    def delete_view(self, request, object_id, extra_context=None):
        user = self.get_object(request, unquote(object_id))
        events = audit_events_by(user=user) if user is not None else 0
        if events and self.has_delete_permission(request, user):
            self.message_user(request, _refusal(user, events), messages.ERROR)
            return HttpResponseRedirect(
                reverse(f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_change", args=[user.pk])
            )
        return super().delete_view(request, object_id, extra_context)

    def delete_queryset(self, request, queryset) -> None:
        # The bulk action's confirmation page already lists the audit events
        # that protect a user (on_delete=PROTECT); this keeps the rule if a
        # caller reaches here anyway.
        kept = [user for user in queryset if audit_events_by(user=user)]
        for user in kept:
            self.message_user(request, _refusal(user, audit_events_by(user=user)), messages.ERROR)
        queryset.exclude(pk__in=[user.pk for user in kept]).delete()


admin.site.unregister(User)
admin.site.register(User, StaffUserAdmin)
