"""The reminder list customer success asks for: each step sent, failed or waiting, with its recipients.

Filterable by the calendar month the key expires in, by state and by the
institution's account owner (and by institution, from the institution
list's "Last reminder"); exportable as CSV (audited). One query for a page
of rows, whatever the number of institutions: the key, the institution,
its owner and the step's notice are joined (list_select_related).
"""

from __future__ import annotations

import datetime as dt

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.auth import get_user_model
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from credentials.admin.common import STAFF_CSS, ViewOnlyAdmin
from credentials.admin.institutions import ExpiryFilter, month_bounds
from credentials.formatting import format_day, format_moment, format_month
from credentials.models import ReminderLog, secret_fields_of
from credentials.selectors import local_today
from credentials.services.staff import EXPORT_REMINDERS_PERMISSION, StaffActionRefused, reminders_export
from institutions.models import Institution
from requestinfo import client_ip
from safeadmin.permissions import missing_permission


class ReminderStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return tuple(ReminderLog.STATE_LABELS.items())

    def queryset(self, request, queryset):
        value = self.value()
        if value is None:
            return queryset
        if value not in ReminderLog.STATE_NOTICE_STATES:
            raise IncorrectLookupParameters(f"state={value!r} is not a reminder state")
        chosen = Q(notice__state__in=ReminderLog.STATE_NOTICE_STATES[value])
        if value == "waiting":  # a step whose notice is not written yet is waiting too
            chosen |= Q(notice__isnull=True)
        return queryset.filter(chosen)


class KeyExpiryMonthFilter(admin.SimpleListFilter):
    """The calendar month the reminded key expires in (the reader's months, as on the institution list)."""

    title = "key expires"
    parameter_name = "expiry"
    MONTH_FORMAT = ExpiryFilter.MONTH_FORMAT
    RELATIVE = {"last-month": -1, "this-month": 0, "next-month": 1}

    def lookups(self, request, model_admin):
        return (("last-month", "Last month"), ("this-month", "This month"), ("next-month", "Next month"))

    def month(self) -> tuple[dt.date, dt.date] | None:
        value = self.value()
        if value in self.RELATIVE:
            return month_bounds(local_today(), self.RELATIVE[value])
        try:
            return month_bounds(dt.datetime.strptime(value or "", self.MONTH_FORMAT).date(), 0)
        except (ValueError, OverflowError):  # not a month, or 9999-12 (its end is in year 10000)
            return None

    def choices(self, changelist):
        yield from super().choices(changelist)
        month = self.month()
        if month and self.value() not in self.RELATIVE:
            yield {"selected": True, "query_string": changelist.get_query_string(), "display": format_month(month[0])}

    def queryset(self, request, queryset):
        if self.value() is None:
            return queryset
        month = self.month()
        if month is None:
            raise IncorrectLookupParameters(f"expiry={self.value()!r} is no month this list can show")
        return queryset.filter(credential__expires_on__gte=month[0], credential__expires_on__lt=month[1])


class OwnerFilter(admin.SimpleListFilter):
    """The institution's account owner: me, nobody, or a staff member who owns institutions."""

    title = "account owner"
    parameter_name = "owner"

    def lookups(self, request, model_admin):
        owners = (
            get_user_model()
            .objects.filter(pk__in=Institution.objects.exclude(account_owner=None).values("account_owner"))
            .order_by("username")
        )
        return (
            ("mine", "Mine"),
            ("none", "No owner"),
            *((str(user.pk), user.get_full_name() or user.get_username()) for user in owners),
        )

    def queryset(self, request, queryset):
        value = self.value()
        if value is None:
            return queryset
        if value == "mine":
            return queryset.filter(credential__institution__account_owner=request.user)
        if value == "none":
            return queryset.filter(credential__institution__account_owner__isnull=True)
        if not value.isdigit() or len(value) > 18:
            raise IncorrectLookupParameters(f"owner={value!r} is not a staff member")
        return queryset.filter(credential__institution__account_owner_id=int(value))


class InstitutionFilter(admin.SimpleListFilter):
    """One institution's reminders (the institution list's "Last reminder" links here); no list of them all."""

    title = "institution"
    parameter_name = "institution"

    def lookups(self, request, model_admin):
        # Only the chosen one: the sidebar cannot list a hundred thousand institutions.
        # (Django drops a filter without choices, and with it the filtering: the value asked for stays one.)
        value = self.value()
        if value is None:
            return ()
        chosen = Institution.objects.filter(pk=int(value)).first() if value.isdigit() and len(value) <= 18 else None
        return ((value, chosen.name if chosen else "No such institution"),)

    def queryset(self, request, queryset):
        value = self.value()
        if value is None:
            return queryset
        if not value.isdigit() or len(value) > 18:
            raise IncorrectLookupParameters(f"institution={value!r} is not an institution")
        return queryset.filter(credential__institution_id=int(value))


@admin.register(ReminderLog)
class ReminderLogAdmin(ViewOnlyAdmin):
    list_display = ("when", "institution", "step", "recipients_display", "state", "key", "owner")
    list_display_links = None
    # The step is its claim; everything about its delivery is read from its notice.
    # No filter by step: its choices would be a DISTINCT over every step of every institution.
    list_filter = (KeyExpiryMonthFilter, ReminderStateFilter, OwnerFilter, InstitutionFilter)
    list_select_related = ("credential__institution__account_owner", "notice")
    search_fields = ("credential__institution__name", "notice__recipients")
    # Counting every step of every institution for "N total" on each page costs more than it tells.
    show_full_result_count = False
    change_list_template = "admin/credentials/reminderlog/change_list.html"
    fields = (
        "institution",
        "credential",
        "step",
        "state",
        "when",
        "attempts",
        "recipients_display",
        "claimed_at",
    )
    readonly_fields = fields

    class Media:
        css = STAFF_CSS

    def get_queryset(self, request):
        return super().get_queryset(request).defer(*secret_fields_of("credential"))

    @admin.display(description="When", ordering="claimed_at")
    def when(self, obj: ReminderLog) -> str:
        return format_moment(obj.delivered_at())

    @admin.display(description="Institution", ordering="credential__institution__name")
    def institution(self, obj: ReminderLog) -> str:
        institution = obj.credential.institution
        url = reverse("admin:institutions_institution_change", args=[institution.pk])
        return format_html('<a href="{}">{}</a>', url, institution.name)

    @admin.display(description="Step", ordering="threshold")
    def step(self, obj: ReminderLog) -> str:
        return obj.step_label()

    @admin.display(description="Recipients")
    def recipients_display(self, obj: ReminderLog) -> str:
        return obj.recipients() or "—"

    @admin.display(description="State", ordering="notice__state")
    def state(self, obj: ReminderLog) -> str:
        state = obj.delivery_state()
        notice = obj.delivery_notice()
        if state in ("failed", "skipped"):
            detail = obj.delivery().partition(": ")[2]
        elif state == "waiting" and notice is not None and notice.attempts:
            detail = f"retry {notice.attempts + 1} due {format_moment(notice.next_attempt_at)}"
        else:
            detail = ""
        badge = format_html(
            '<span class="reminder-state reminder-state--{}">{}</span>', state, ReminderLog.STATE_LABELS[state]
        )
        return format_html("{}<br><small>{}</small>", badge, detail) if detail else badge

    @admin.display(description="Key", ordering="credential__expires_on")
    def key(self, obj: ReminderLog) -> str:
        credential = obj.credential
        url = reverse("admin:credentials_cd2credential_change", args=[credential.pk])
        return format_html(
            '<a href="{}">{}</a><br><small>expires {}</small>', url, credential.hint, format_day(credential.expires_on)
        )

    @admin.display(description="Account owner", ordering="credential__institution__account_owner__username")
    def owner(self, obj: ReminderLog) -> str:
        owner = obj.credential.institution.account_owner
        return (owner.get_full_name() or owner.get_username()) if owner else "—"

    @admin.display(description="Attempts")
    def attempts(self, obj: ReminderLog) -> int:
        return obj.attempts()

    def changelist_view(self, request, extra_context=None):
        query = request.GET.urlencode()
        extra_context = {
            **(extra_context or {}),
            "title": "Reminders: each step sent, failed or waiting, and who received it",
            "can_export": request.user.has_perm(EXPORT_REMINDERS_PERMISSION),
            "export_url": reverse("admin:credentials_reminderlog_export") + (f"?{query}" if query else ""),
        }
        return super().changelist_view(request, extra_context)

    def get_urls(self):
        def export(request):
            return export_view(request, self)

        return [
            path("export/", self.admin_site.admin_view(export), name="credentials_reminderlog_export"),
            *super().get_urls(),
        ]


@require_POST
def export_view(request: HttpRequest, model_admin: ReminderLogAdmin) -> HttpResponse:
    """The list as filtered (the same query string), as CSV: POST, for it writes an audit event."""
    if not model_admin.has_view_permission(request):
        raise missing_permission("credentials.view_reminderlog", doing="Exporting the reminder list")
    if not request.user.has_perm(EXPORT_REMINDERS_PERMISSION):
        raise missing_permission(EXPORT_REMINDERS_PERMISSION, doing="Exporting the reminder list")
    try:
        changelist = model_admin.get_changelist_instance(request)
    except IncorrectLookupParameters:
        messages.error(request, "A filter of the list was not understood, so nothing was exported.")
        return HttpResponseRedirect(reverse("admin:credentials_reminderlog_changelist"))
    try:
        lines = reminders_export(queryset=changelist.queryset, actor=request.user, ip_address=client_ip(request))
    except StaffActionRefused as exc:
        messages.error(request, str(exc))
        return HttpResponseRedirect(reverse("admin:credentials_reminderlog_changelist"))
    response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="reminders-{timezone.localdate().isoformat()}.csv"'
    response["Cache-Control"] = "no-store"
    return response
