"""Reminders that ended: the institution list's filter and the note on an institution's page.

A lapsed key is reminded until REMINDER_STOP_AFTER_EXPIRY_MONTHS after its
expiry (credentials/days.py); after that its contacts hear nothing more and
staff take over. Counted on each institution's own day.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html

from credentials.days import institution_key_days
from credentials.formatting import format_day
from credentials.selectors import reminders_ended


class RemindersEndedFilter(admin.SimpleListFilter):
    title = "reminder schedule"
    parameter_name = "reminders"

    def lookups(self, request, model_admin):
        months = settings.REMINDER_STOP_AFTER_EXPIRY_MONTHS
        return (("ended", f"Reminders ended ({months} months after expiry)"),)

    def queryset(self, request, queryset):
        if self.value() == "ended":
            return queryset.filter(reminders_ended(now=timezone.now()))
        return queryset


def reminders_ended_note(institution) -> str:
    """ "Reminders ended on ..." for an institution whose active key lapsed past the horizon, else ""."""
    expires_on = getattr(institution, "active_expires_on", None)
    if expires_on is None:
        return ""
    days = institution_key_days(institution, expires_on=expires_on, now=timezone.now())
    if not days.reminders_ended:
        return ""
    return format_html(
        '<strong class="reminders-ended">Reminders ended</strong> on {}: no more reminders go to the '
        "contacts ({} months after expiry). Ask them for a new key yourself.",
        format_day(days.reminders_end_on),
        settings.REMINDER_STOP_AFTER_EXPIRY_MONTHS,
    )
