"""The institution list and page: the staff cockpit (key state, buttons, history, export)."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ORDER_VAR, ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import models
from django.db.models import Exists, F, OuterRef, Q
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from import_export.admin import ImportMixin
from import_export.forms import ImportForm

from credentials.admin import pages
from credentials.admin.common import STAFF_CSS, ViewOnlyMixin, key_state_badge, link_state_badge
from credentials.admin.reminders_ended import RemindersEndedFilter, reminders_ended_note
from credentials.days import expiry_days_between, expiry_phrase
from credentials.formatting import format_day, format_moment, format_month
from credentials.models import (
    SECRET_FIELDS,
    VERDICT_LABELS,
    CD2Credential,
    LinkBatch,
    LinkBatchItem,
    Notice,
    PendingReason,
    SubmissionLink,
    step_label,
)
from credentials.selectors import (
    institution_next_reminder,
    institution_timeline,
    institutions_with_key_status,
    local_today,
    regions_in_use,
    reminded_without_answer,
)
from credentials.services.links import link_batch_create, link_batch_problems, link_batch_progress
from credentials.services.onboarding import InstitutionResource
from credentials.services.staff import (
    EXPORT_PERMISSION,
    SEND_LINK_PERMISSION,
    StaffActionRefused,
    institutions_export,
)
from institutions.models import Contact, Institution, KeyState
from requestinfo import client_ip

# --------------------------------------------------------------------------
# List filters
# --------------------------------------------------------------------------


def month_bounds(today: dt.date, months_ahead: int) -> tuple[dt.date, dt.date]:
    """The first day of the calendar month `months_ahead` after today's, and the first day of the one after."""
    year, month = divmod(today.month - 1 + months_ahead, 12)
    start = dt.date(today.year + year, month + 1, 1)
    year, month = divmod(start.month, 12)
    return start, dt.date(start.year + year, month + 1, 1)


class ExpiryFilter(admin.SimpleListFilter):
    title = "expiry"
    parameter_name = "expiry"
    # A month as YYYY-MM (the dashboard's bars link to these).
    MONTH_FORMAT = "%Y-%m"

    def lookups(self, request, model_admin):
        return (
            ("expired", "Expired"),
            ("7", "7 days or less"),
            ("30", "30 days or less"),
            ("90", "90 days or less"),
            ("this-month", "This month"),
            ("next-month", "Next month"),
            ("ok", f"OK (more than {settings.CD2_EXPIRING_DAYS} days)"),
            ("none", "No active key"),
        )

    def month(self) -> tuple[dt.date, dt.date] | None:
        """The calendar month asked for (this-month, next-month or YYYY-MM), or None."""
        value, today = self.value(), local_today()
        if value == "this-month":
            return month_bounds(today, 0)
        if value == "next-month":
            return month_bounds(today, 1)
        try:
            start = dt.datetime.strptime(value or "", self.MONTH_FORMAT).date()
        except ValueError:
            return None
        return month_bounds(start, 0)

    def choices(self, changelist):
        yield from super().choices(changelist)
        month = self.month()
        if month and self.value() not in ("this-month", "next-month"):
            # A month picked from the dashboard's chart: show it as the selected choice.
            yield {
                "selected": True,
                "query_string": changelist.get_query_string(),
                "display": format_month(month[0]),
            }

    def queryset(self, request, queryset):
        # Ranges of the stored key_expires_on (the active key's expiry), which
        # the institution_key_expiry index serves in the list's own order. A
        # month is the reader's (their zone); a day count is each
        # institution's own, as the "Days left" column shows it (credentials/days.py).
        value, now = self.value(), timezone.now()
        month = self.month()
        if month:
            return queryset.filter(key_expires_on__gte=month[0], key_expires_on__lt=month[1])
        if value == "expired":
            return queryset.filter(expiry_days_between("key_expires_on", now, at_most=-1))
        if value in ("7", "30", "90"):
            return queryset.filter(expiry_days_between("key_expires_on", now, at_least=0, at_most=int(value)))
        if value == "ok":
            return queryset.filter(expiry_days_between("key_expires_on", now, at_least=settings.CD2_EXPIRING_DAYS + 1))
        if value == "none":
            return queryset.filter(key_expires_on__isnull=True)
        return queryset


class KeyCheckFilter(admin.SimpleListFilter):
    title = "key check"
    parameter_name = "check"

    def lookups(self, request, model_admin):
        return (
            ("failing", "Failing check"),
            ("pending", "Pending check"),
            ("never", "Active, never checked"),
            ("missing", "No working key (missing or pending)"),
        )

    def queryset(self, request, queryset):
        # The stored key summary: failing, pending and missing are key_state's values that do not depend on the date.
        value = self.value()
        if value == "failing":
            return queryset.filter(key_condition=KeyState.FAILING)
        if value == "pending":
            return queryset.filter(key_condition=KeyState.PENDING)
        if value == "never":
            return queryset.filter(key_expires_on__isnull=False, key_checked_at__isnull=True)
        if value == "missing":
            return queryset.filter(key_condition__in=(KeyState.MISSING, KeyState.PENDING))
        return queryset


class ServedFilter(admin.SimpleListFilter):
    """Institutions we serve (active or onboarding): what reminders and the staff digest cover."""

    title = "served"
    parameter_name = "served"

    def lookups(self, request, model_admin):
        return (("1", "Served (active or onboarding)"),)

    def queryset(self, request, queryset):
        if self.value() == "1":
            return queryset.filter(status__in=Institution.SERVED_STATUSES)
        return queryset


class RegionFilter(admin.SimpleListFilter):
    title = "region"
    parameter_name = "region"

    def lookups(self, request, model_admin):
        return [(region, region) for region in regions_in_use()]

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        if "\x00" in value:
            # No region has one, and PostgreSQL refuses a NUL in a query.
            return queryset.none()
        return queryset.filter(key_region=value)


class AccountOwnerFilter(admin.RelatedFieldListFilter):
    """Only the users who own at least one institution.

    Django's RelatedOnlyFieldListFilter finds them with SELECT DISTINCT over
    the list's whole (annotated) queryset; this asks the user table instead,
    one EXISTS per user on the indexed account_owner column.
    """

    def field_choices(self, field, request, model_admin):
        owns = Institution.objects.filter(account_owner=OuterRef("pk"))
        ordering = self.field_admin_ordering(field, request, model_admin)
        return field.get_choices(include_blank=False, limit_choices_to=Q(Exists(owns)), ordering=ordering)


class MineFilter(admin.SimpleListFilter):
    title = "my institutions"
    parameter_name = "mine"

    def lookups(self, request, model_admin):
        return (("1", "Where I am the account owner"),)

    def queryset(self, request, queryset):
        if self.value() == "1":
            return queryset.filter(account_owner=request.user)
        return queryset


class ReminderFilter(admin.SimpleListFilter):
    title = "reminders"
    parameter_name = "reminded"

    def lookups(self, request, model_admin):
        return (("no-answer", "Reminded, no new key yet"),)

    def queryset(self, request, queryset):
        if self.value() == "no-answer":
            return queryset.filter(reminded_without_answer())
        return queryset


TIMELINE_KINDS = {
    "link": "Link",
    "submission": "Key",
    "check": "Check",
    "reminder": "Reminder",
    "staff": "Staff",
    "audit": "Audit",
}

# --------------------------------------------------------------------------
# Inlines: contacts (editable), key history and links (read-only)
# --------------------------------------------------------------------------


class ContactInline(admin.TabularInline):
    model = Contact
    extra = 0
    fields = ("name", "email", "role", "receives_reminders")


class ReadOnlyInline(ViewOnlyMixin, admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = False


class KeyHistoryInline(ReadOnlyInline):
    model = CD2Credential
    verbose_name = "key"
    verbose_name_plural = "Key history (newest first; the Client ID and Secret are never shown here)"
    fields = (
        "key",
        "status",
        "source",
        "submitted",
        "expires_on",
        "last_check",
        "status_reason",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        # Never load the encrypted columns: a page that does not decrypt cannot leak.
        return super().get_queryset(request).defer(*SECRET_FIELDS).select_related("created_by")

    @admin.display(description="Key")
    def key(self, obj: CD2Credential) -> str:
        url = reverse("admin:credentials_cd2credential_change", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, obj.hint)

    @admin.display(description="Submitted by, at")
    def submitted(self, obj: CD2Credential) -> str:
        who = obj.submitted_by or obj.submitted_by_email or (obj.created_by and obj.created_by.get_username()) or "—"
        return f"{who}, {format_moment(obj.submitted_at)}"

    @admin.display(description="Last check")
    def last_check(self, obj: CD2Credential) -> str:
        if not obj.last_verified_at:
            return obj.last_verification or "never"
        return f"{format_moment(obj.last_verified_at)}: {obj.last_verification}"


class SubmissionLinkInline(ReadOnlyInline):
    model = SubmissionLink
    verbose_name_plural = "Submission links"
    fields = ("created_at", "created_by", "reason", "sent_to", "expires_at", "state_badge", "used_at", "revoked_at")
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("created_by")

    @admin.display(description="State")
    def state_badge(self, obj: SubmissionLink) -> str:
        return link_state_badge(obj)


# --------------------------------------------------------------------------
# Institution
# --------------------------------------------------------------------------


class CountQuerysetPaginator(Paginator):
    """Counts `object_list.count_queryset` when the list set one (see InstitutionChangeList)."""

    @cached_property
    def count(self) -> int:
        count_queryset = getattr(self.object_list, "count_queryset", None)
        if count_queryset is None:
            return super().count
        return count_queryset.count()


class InstitutionChangeList(ChangeList):
    def get_filters(self, request):
        # Built once: count_queryset applies the same filters to the plain
        # queryset, and building them again would repeat their choice queries.
        if not hasattr(self, "_filters"):
            self._filters = super().get_filters(request)
        return self._filters

    def count_queryset(self, request):
        """The filtered list without the key annotations and their join, or None when it needs them.

        An institution has at most one active key (a partial unique
        constraint), so the LEFT JOIN to it never changes the count, and
        every filter reads the institution's own columns (the stored key
        summary), so only lookups typed into the URL might need the join.
        """
        _, _, remaining_lookup_params, _, _ = self.get_filters(request)
        if remaining_lookup_params:
            return None
        annotated = self.root_queryset
        self.root_queryset = self.model_admin.plain_queryset(request)
        try:
            return self.get_queryset(request).order_by()
        finally:
            self.root_queryset = annotated

    def get_ordering(self, request, queryset):
        # The count's plain queryset has none of the key annotations that the
        # columns sort by (?o=3 is "key_state"), and a count needs no order.
        if "key_state" not in queryset.query.annotations:
            return []
        return super().get_ordering(request, queryset)

    def get_results(self, request):
        count_queryset = self.count_queryset(request)
        if count_queryset is not None:
            self.queryset = self.queryset.all()
            self.queryset.count_queryset = count_queryset
        super().get_results(request)
        if isinstance(self.result_list, models.QuerySet) and not self.result_list.query.is_sliced:
            # Everything fits on one page, so Django asks for the rows without a LIMIT. Given one (it
            # changes nothing: there are at most that many), PostgreSQL walks the index in the list's
            # order and stops; without it, a filter whose rows it over-estimates (never checked: none
            # at 100,000) becomes a scan and sort of every institution.
            limit = self.list_max_show_all if self.show_all else self.list_per_page
            self.result_list = self.result_list[: max(limit, self.result_count)]

    def get_ordering_field_columns(self):
        # Without ?o= the list is in get_ordering's order (soonest expiry
        # first); mark that column, not the Meta ordering's "name".
        if ORDER_VAR not in self.params and "expires_on" in self.list_display:
            return {self.list_display.index("expires_on"): "asc"}
        return super().get_ordering_field_columns()


@admin.register(Institution)
class InstitutionAdmin(ImportMixin, admin.ModelAdmin):
    # Bulk onboarding (credentials/services/onboarding.py): upload, preview every row, confirm.
    resource_classes = (InstitutionResource,)
    import_form_class = ImportForm
    # The first three columns answer "whose key, in what state, when"; they
    # fit a phone's width (staff.css hides the rest there).
    list_display = (
        "name",
        "key_status",
        "expires_on",
        "days_left_display",
        "last_reminder",
        "next_reminder_display",
        "last_check",
        "last_pulled",
        "canvas_domain",
        "account_owner",
    )
    list_select_related = ("account_owner",)
    list_filter = (
        ExpiryFilter,
        KeyCheckFilter,
        ReminderFilter,
        MineFilter,
        ServedFilter,
        RemindersEndedFilter,
        "status",
        RegionFilter,
        ("account_owner", AccountOwnerFilter),
    )
    search_fields = ("name", "slug", "canvas_domain", "contacts__email")
    search_help_text = "Search by name, slug, Canvas domain or a contact's email."
    list_per_page = 50
    # Django renders this column through a form widget's template, once per row: a third of the
    # list's rendering time at 50 rows (bench/RESULTS.md). The same markup, written directly.
    action_checkbox_html = (
        '<input type="checkbox" name="{}" value="{}" class="action-select" '
        'aria-label="Select this object for an action - {}">'
    )
    # No second COUNT over every institution for "(N total)"; the filtered count stays.
    show_full_result_count = False
    paginator = CountQuerysetPaginator
    empty_value_display = "—"
    prepopulated_fields = {"slug": ("name",)}
    inlines = (ContactInline, KeyHistoryInline, SubmissionLinkInline)
    readonly_fields = ("key_summary", "timeline", "created_at", "updated_at")
    fieldsets = (
        ("Current key", {"fields": ("key_summary",)}),
        (None, {"fields": ("name", "slug", "canvas_domain", "status", "timezone", "account_owner", "notes")}),
        ("Timeline: links, keys, checks, reminders and staff actions", {"fields": ("timeline",)}),
        ("Record", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}),
    )
    actions = ("send_submission_links", "export_csv")
    change_form_template = "admin/institutions/institution/change_form.html"

    class Media:
        css = STAFF_CSS

    def get_ordering(self, request):
        # Soonest expiry first, institutions without a key at the end; only on
        # this list, whose queryset carries the annotation. Other admins' list
        # filters order institutions with this method too, on plain querysets.
        # (Not in `ordering`: the system check would read the F() as a field.)
        match = request.resolver_match
        if match and match.url_name == f"{self.opts.app_label}_{self.opts.model_name}_changelist":
            # The stored key_expires_on: the institution_key_expiry index serves this order.
            return (F("key_expires_on").asc(nulls_last=True), "name")
        return ("name",)

    def get_changelist(self, request, **kwargs):
        return InstitutionChangeList

    def plain_queryset(self, request):
        """Institutions as the list would show them, without the key annotations (for counting)."""
        return super().get_queryset(request)

    def get_queryset(self, request):
        return institutions_with_key_status(queryset=self.plain_queryset(request))

    # -- list columns -----------------------------------------------------

    def action_checkbox(self, obj: Institution) -> str:
        return format_html(self.action_checkbox_html, helpers.ACTION_CHECKBOX_NAME, obj.pk, str(obj))

    @admin.display(description="Key status", ordering="key_state")
    def key_status(self, obj: Institution) -> str:
        return key_state_badge(obj.key_state)

    @admin.display(description="Expires on", ordering="key_expires_on")
    def expires_on(self, obj: Institution):
        return obj.active_expires_on

    @admin.display(description="Days left", ordering=F("key_expires_on").asc(nulls_last=True))
    def days_left_display(self, obj: Institution) -> str:
        if obj.days_left is None:
            return "—"
        if obj.days_left < 0:
            return f"{-obj.days_left} overdue"
        return str(obj.days_left)

    @admin.display(description="Last reminder", ordering=F("last_reminder_at").desc(nulls_last=True))
    def last_reminder(self, obj: Institution) -> str:
        if obj.last_reminder_at is None:
            return "—"
        return format_html(
            "{}<br><small>{}</small>", step_label(obj.last_reminder_step), format_day(obj.last_reminder_at)
        )

    @admin.display(description="Next reminder", ordering=F("key_expires_on").asc(nulls_last=True))
    def next_reminder_display(self, obj: Institution) -> str:
        step = institution_next_reminder(obj, now=timezone.now())
        if step is None:
            return "—"
        return format_html("{}<br><small>{}</small>", step.label(), format_day(step.on))

    @admin.display(description="Last check", ordering=F("key_checked_at").desc(nulls_last=True))
    def last_check(self, obj: Institution) -> str:
        if not obj.active_key_id:
            return "—"
        if not obj.active_last_verdict:
            return "never"
        when = format_day(obj.active_last_verified_at) if obj.active_last_verified_at else ""
        return format_html(
            '<span title="{}">{}</span><br><small>{}</small>',
            obj.active_last_verification,
            VERDICT_LABELS.get(obj.active_last_verdict, obj.active_last_verdict),
            when,
        )

    @admin.display(description="Last data pulled", ordering=F("active_last_pulled_at").desc(nulls_last=True))
    def last_pulled(self, obj: Institution) -> str:
        # Reported by the data pipeline through the API (a sync report of ok).
        if not obj.active_last_pulled_at:
            return "never" if obj.active_key_id else "—"
        return format_moment(obj.active_last_pulled_at)

    # -- change page ------------------------------------------------------

    @admin.display(description="Status")
    def key_summary(self, obj: Institution) -> str:
        if obj.pk is None:
            return "—"
        badge = key_state_badge(obj.key_state)
        parts = [badge]
        if obj.pending_key_id:
            parts.append(
                format_html(
                    'New key <a href="{}">{}</a> (expires {}) waits for its check: {}. Reminders about the '
                    "current key are paused until the check ends.",
                    reverse("admin:credentials_cd2credential_change", args=[obj.pending_key_id]),
                    obj.pending_hint,
                    format_day(obj.pending_expires_on),
                    PendingReason(obj.pending_reason).label if obj.pending_reason else "not checked yet",
                )
            )
        if obj.active_key_id:
            parts.append(
                format_html(
                    '{}<a href="{}">{}</a> · expires {} ({}) · region {} · last data pulled {}',
                    "Current key " if obj.pending_key_id else "",
                    reverse("admin:credentials_cd2credential_change", args=[obj.active_key_id]),
                    obj.active_hint,
                    format_day(obj.active_expires_on),
                    expiry_phrase(obj.days_left),
                    obj.active_region,
                    self.last_pulled(obj),
                )
            )
            ended = reminders_ended_note(obj)
            if ended:
                parts.append(ended)
        return format_html("<br>".join(["{}"] * len(parts)), *parts)

    @admin.display(description="Newest first")
    def timeline(self, obj: Institution) -> str:
        if obj.pk is None:
            return "—"
        entries = institution_timeline(institution=obj)
        if not entries:
            return "Nothing has happened yet."
        rows = format_html_join(
            "",
            '<li class="timeline__entry timeline__entry--{}"><time datetime="{}">{}</time> '
            '<span class="timeline__kind">{}</span> <strong>{}</strong>{}{}</li>',
            (
                (
                    e.kind,
                    e.at.isoformat(),
                    format_moment(e.at),
                    TIMELINE_KINDS[e.kind],
                    e.title,
                    format_html(" · by {}", e.who) if e.who else "",
                    format_html('<br><span class="timeline__detail">{}</span>', e.detail) if e.detail else "",
                )
                for e in entries
            ),
        )
        return format_html('<ol class="timeline">{}</ol>', rows)

    def get_urls(self):
        def wrap(view):
            def wrapped(request, object_id):
                return view(request, self, object_id)

            return self.admin_site.admin_view(wrapped)

        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path(
                "link-batch/<int:batch_id>/",
                self.admin_site.admin_view(self.link_batch_view),
                name=f"{prefix}_link_batch",
            ),
            path("<path:object_id>/send-link/", wrap(pages.send_link_view), name=f"{prefix}_send_link"),
            path(
                "<path:object_id>/send-reminder/",
                wrap(pages.send_reminder_view),
                name=f"{prefix}_send_reminder",
            ),
            path("<path:object_id>/check-key/", wrap(pages.check_key_view), name=f"{prefix}_check_key"),
            path("<path:object_id>/revoke-key/", wrap(pages.revoke_key_view), name=f"{prefix}_revoke_key"),
            path("<path:object_id>/add-key/", wrap(pages.add_key_view), name=f"{prefix}_add_key"),
            path(
                "<path:object_id>/add-submitter-contact/",
                wrap(pages.add_submitter_contact_view),
                name=f"{prefix}_add_submitter_contact",
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        institution = Institution.objects.filter(pk=object_id).first() if str(object_id).isdigit() else None
        extra_context = {**(extra_context or {}), **pages.staff_actions(request, institution)}
        return super().change_view(request, object_id, form_url, extra_context)

    # -- actions ----------------------------------------------------------

    def has_export_permission(self, request) -> bool:
        return request.user.has_perm(EXPORT_PERMISSION)

    def has_send_link_permission(self, request) -> bool:
        return request.user.has_perm(SEND_LINK_PERMISSION)

    @admin.action(description="Export selected institutions to CSV (no secrets)", permissions=("export",))
    def export_csv(self, request, queryset):
        try:
            body = institutions_export(queryset=queryset, actor=request.user, ip_address=client_ip(request))
        except StaffActionRefused as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return None
        response = HttpResponse(body, content_type="text/csv; charset=utf-8")
        filename = f"institutions-{timezone.localdate():%Y-%m-%d}.csv"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Send a submission link to the selected institutions", permissions=("send_link",))
    def send_submission_links(self, request, queryset):
        # Queued and mailed at LINK_BULK_PER_SECOND, each institution once; the progress page follows it.
        ids = list(queryset.order_by().values_list("pk", flat=True))
        batch = link_batch_create(institution_ids=ids, created_by=request.user)
        self.message_user(request, f"Queued a submission link for {len(ids)} institution(s).", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:institutions_institution_link_batch", args=[batch.pk]))

    def link_batch_view(self, request, batch_id: int):
        if not self.has_send_link_permission(request):
            raise PermissionDenied
        batch = get_object_or_404(LinkBatch.objects.select_related("created_by"), pk=batch_id)
        progress = link_batch_progress(batch=batch)
        total = sum(progress.values())
        done = total - progress[Notice.State.PENDING] - progress[Notice.State.SENDING]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Submission links: {done} of {total} done",
            "batch": batch,
            "progress": [(LinkBatchItem.PROGRESS_LABELS[state], n) for state, n in progress.items()],
            "problems": link_batch_problems(batch=batch),
            "running": done < total,
            "per_second": settings.LINK_BULK_PER_SECOND,
            "give_up_hours": int(settings.NOTICE_GIVE_UP_AFTER.total_seconds() // 3600),
        }
        return TemplateResponse(request, "admin/institutions/institution/link_batch.html", context)
