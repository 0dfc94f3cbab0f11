"""What every staff admin page shares: the stylesheet, view-only admins and the state badges."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html

from credentials.models import SubmissionLink
from institutions.models import Institution, KeyState
from safeadmin.lists import SafeFilterValuesMixin

STAFF_CSS = {"all": ("admin-extra/staff.css",)}


@dataclass(frozen=True)
class ConfirmRow:
    """One institution on a "send?" confirmation page and the addresses that would receive the mail."""

    institution: Institution
    recipients: tuple[str, ...]


KEY_STATE_LABELS = dict(KeyState.choices)


class ViewOnlyMixin:
    """Rows written only by services: nobody edits or deletes them here, superusers included."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class ViewOnlyAdmin(SafeFilterValuesMixin, ViewOnlyMixin, admin.ModelAdmin):
    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions


def key_state_badge(state: str | None) -> str:
    state = state or KeyState.MISSING
    return format_html('<span class="key-badge key-badge--{}">{}</span>', state, KEY_STATE_LABELS.get(state, state))


def link_state_badge(link: SubmissionLink) -> str:
    state = link.state(timezone.now())
    return format_html('<span class="link-state link-state--{}">{}</span>', state, state)
