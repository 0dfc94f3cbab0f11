"""What credentials adds to the institution admin (institutions/admin.py): the staff cockpit's keys.

The key columns, filters, history, timeline, buttons, bulk import, export and
submission links, as one `InstitutionAdminExtension` that
StaffAdminConfig.ready (apps.py here) registers with `institution_admin_extend`.
"""

from __future__ import annotations

import datetime as dt

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.options import IncorrectLookupParameters
from django.db.models import Exists, F, OuterRef, Prefetch
from django.http import Http404, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from credentials.admin import pages
from credentials.admin.common import STAFF_CSS, ConfirmRow, ViewOnlyMixin, key_state_badge, link_state_badge
from credentials.admin.reminders_ended import RemindersEndedFilter, reminders_ended_note
from credentials.days import expiry_days_between, expiry_phrase, institution_today
from credentials.expressions import urgency_order
from credentials.formatting import format_day, format_moment, format_month
from credentials.mail.recipients import contact_emails
from credentials.models import (
    SECRET_FIELDS,
    VERDICT_LABELS,
    CD2Credential,
    LinkBatch,
    LinkBatchItem,
    Notice,
    PendingReason,
    ReminderLog,
    SubmissionLink,
    reminder_state,
    step_label,
)
from credentials.selectors import (
    institution_next_reminder,
    institution_timeline,
    institutions_with_key_status,
    local_today,
    no_working_key,
    regions_in_use,
    reminded_without_answer,
)
from credentials.services.links import link_batch_create, link_batch_problems, link_batch_progress
from credentials.services.onboarding import IMPORT_GUIDE, InstitutionResource, import_limits, import_template
from credentials.services.spreadsheets import BoundedCSV, BoundedXLSX, UploadRefused
from credentials.services.staff import (
    EXPORT_PERMISSION,
    SEND_LINK_PERMISSION,
    StaffActionRefused,
    institutions_export,
)
from institutions.admin import InstitutionAdminExtension, ServedFilter, insert_after
from institutions.models import KEY_STATES_BY_URGENCY, Contact, Institution, KeyState
from requestinfo import client_ip
from safeadmin.permissions import missing_permission

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
            return month_bounds(start, 0)
        except (ValueError, OverflowError):  # not a month, or 9999-12 (its end is in year 10000)
            return None

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
        if value is not None:
            raise IncorrectLookupParameters(f"expiry={value!r} is no choice and no month this list can show")
        return queryset


class KeyCheckFilter(admin.SimpleListFilter):
    title = "key check"
    parameter_name = "check"

    def lookups(self, request, model_admin):
        return (
            ("failing", "Failing check"),
            ("pending", "Pending check"),
            ("never", "Active, never checked"),
            ("lost", "Lost: ask for a new key"),
            ("missing", "No working key (expired, failing, pending, missing or lost)"),
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
        if value == "lost":
            return queryset.filter(key_condition=KeyState.LOST)
        if value == "missing":
            return queryset.filter(no_working_key())
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
# Inlines: key history and links (read-only)
# --------------------------------------------------------------------------


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
        "state",
        "source",
        "submitted",
        "expires_on",
        "last_check",
        "status_reason",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        # Never load the encrypted columns: a page that does not decrypt cannot leak.
        return super().get_queryset(request).defer(*SECRET_FIELDS).select_related("created_by", "institution")

    @admin.display(description="Status")
    def state(self, obj: CD2Credential) -> str:
        # Expired, or failing its check, as the institution shows it; never a bare "Active" for those.
        return obj.state_label(institution_today(obj.institution, timezone.now()))

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
# List columns: functions of an institution annotated by institutions_with_key_status
# --------------------------------------------------------------------------


@admin.display(description="Key status", ordering=urgency_order("key_state", KEY_STATES_BY_URGENCY))
def key_status(obj: Institution) -> str:
    return key_state_badge(obj.key_state)


@admin.display(description="Expires on", ordering="key_expires_on")
def expires_on(obj: Institution):
    return obj.active_expires_on


@admin.display(description="Days left", ordering=F("key_expires_on").asc(nulls_last=True))
def days_left_display(obj: Institution) -> str:
    if obj.days_left is None:
        return "—"
    if obj.days_left < 0:
        return f"{-obj.days_left} overdue"
    return str(obj.days_left)


@admin.display(description="Last reminder", ordering=F("last_reminder_at").desc(nulls_last=True))
def last_reminder(obj: Institution) -> str:
    """The last attempt and how it went ("7 days before / Failed 3 Dec 2026"), linked to its reminders."""
    if obj.last_reminder_at is None:
        return "—"
    state = reminder_state(obj.last_reminder_state)
    return format_html(
        '<a href="{}?institution={}">{}</a><br>'
        '<small><span class="reminder-state reminder-state--{}">{}</span> {}</small>',
        reverse("admin:credentials_reminderlog_changelist"),
        obj.pk,
        step_label(obj.last_reminder_step),
        state,
        ReminderLog.STATE_LABELS[state],
        format_day(obj.last_reminder_at),
    )


@admin.display(description="Next reminder", ordering=F("key_expires_on").asc(nulls_last=True))
def next_reminder_display(obj: Institution) -> str:
    step = institution_next_reminder(obj, now=timezone.now())
    if step is None:
        return "—"
    return format_html("{}<br><small>{}</small>", step.label(), format_day(step.on))


@admin.display(description="Last check", ordering=F("key_checked_at").desc(nulls_last=True))
def last_check(obj: Institution) -> str:
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
def last_pulled(obj: Institution) -> str:
    # Reported by the data pipeline through the API (a sync report of ok).
    if not obj.active_last_pulled_at:
        return "never" if obj.active_key_id else "—"
    return format_moment(obj.active_last_pulled_at)


# The first three columns answer "whose key, in what state, when"; they
# fit a phone's width (staff.css hides the rest there).
KEY_COLUMNS = (
    key_status,
    expires_on,
    days_left_display,
    last_reminder,
    next_reminder_display,
    last_check,
    last_pulled,
)

# --------------------------------------------------------------------------
# The institution's page: its key and its timeline
# --------------------------------------------------------------------------


@admin.display(description="Status")
def key_summary(obj: Institution) -> str:
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
                last_pulled(obj),
            )
        )
        ended = reminders_ended_note(obj)
        if ended:
            parts.append(ended)
    return format_html("<br>".join(["{}"] * len(parts)), *parts)


@admin.display(description="Newest first")
def timeline(obj: Institution) -> str:
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


CURRENT_KEY_FIELDSET = ("Current key", {"fields": (key_summary,)})
TIMELINE_FIELDSET = ("Timeline: links, keys, checks, reminders and staff actions", {"fields": (timeline,)})

# --------------------------------------------------------------------------
# Actions on the list, and the pages behind the page's buttons
# --------------------------------------------------------------------------


# Institutions a "send?" page names one by one; the rest are counted.
CONFIRM_LISTED = 200


def _bulk_link_confirm(model_admin, request, queryset):
    """The bulk send's confirmation: each institution with its addresses (CONFIRM_LISTED at most), those with none."""
    chosen = Institution.objects.filter(pk__in=queryset.order_by().values("pk")).order_by("name", "pk")
    reachable = Exists(Contact.objects.filter(institution=OuterRef("pk"), receives_reminders=True))
    with_contacts = chosen.filter(reachable)
    listed = with_contacts.prefetch_related(
        Prefetch(
            "contacts",
            queryset=Contact.objects.filter(receives_reminders=True).order_by("pk"),
            to_attr="reminder_contacts",
        )
    )[:CONFIRM_LISTED]
    rows = [ConfirmRow(institution=inst, recipients=tuple(contact_emails(inst))) for inst in listed]
    reached = with_contacts.count()
    post = request.POST
    hidden = [("action", post.get("action", "")), ("index", "0"), ("select_across", post.get("select_across", "0"))]
    hidden += [(ACTION_CHECKBOX_NAME, pk) for pk in post.getlist(ACTION_CHECKBOX_NAME)]
    return pages.confirm_page(
        request,
        model_admin,
        context={
            "title": f"Send a submission link to {reached} institution{'' if reached == 1 else 's'}?",
            "what": f"A new submission link for each institution, valid for {settings.SUBMISSION_LINK_DAYS} days, "
            f"mailed {settings.LINK_BULK_PER_SECOND:g} per second. Each ends the institution's link sent before.",
            "rows": rows,
            "institution_count": reached,
            "recipient_count": Contact.objects.filter(
                institution__in=with_contacts.values("pk"), receives_reminders=True
            ).count(),
            "more": max(reached - len(rows), 0),
            "nobody": list(chosen.exclude(reachable)[:CONFIRM_LISTED]),
            "hidden": hidden,
            "form_action": request.get_full_path(),
            "cancel_url": request.get_full_path(),
            "parent_url": reverse("admin:institutions_institution_changelist"),
            "parent_label": "Institutions",
            "confirm_label": f"Yes, send {reached} link{'' if reached == 1 else 's'}",
        },
    )


@admin.action(description="Send a submission link to the selected institutions…")
def send_submission_links(model_admin, request, queryset):
    if not pages.confirmed(request):
        return _bulk_link_confirm(model_admin, request, queryset)
    # Queued and mailed at LINK_BULK_PER_SECOND, each institution once; the progress page follows it.
    ids = list(queryset.order_by().values_list("pk", flat=True))
    batch = link_batch_create(institution_ids=ids, created_by=request.user)
    model_admin.message_user(request, f"Queued a submission link for {len(ids)} institution(s).", messages.SUCCESS)
    return HttpResponseRedirect(reverse("admin:institutions_institution_link_batch", args=[batch.pk]))


@admin.action(description="Export selected institutions to CSV (no secrets)")
def export_csv(model_admin, request, queryset):
    try:
        body = institutions_export(queryset=queryset, actor=request.user, ip_address=client_ip(request))
    except StaffActionRefused as exc:
        model_admin.message_user(request, str(exc), messages.ERROR)
        return None
    response = HttpResponse(body, content_type="text/csv; charset=utf-8")
    filename = f"institutions-{timezone.localdate():%Y-%m-%d}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response


def link_batch_view(request, model_admin, batch_id: int):
    if not request.user.has_perm(SEND_LINK_PERMISSION):
        raise missing_permission(SEND_LINK_PERMISSION, doing="Sending submission links")
    batch = get_object_or_404(LinkBatch.objects.select_related("created_by"), pk=batch_id)
    progress = link_batch_progress(batch=batch)
    total = sum(progress.values())
    done = total - progress[Notice.State.PENDING] - progress[Notice.State.SENDING]
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": f"Submission links: {done} of {total} done",
        "batch": batch,
        "progress": [(LinkBatchItem.PROGRESS_LABELS[state], n) for state, n in progress.items()],
        "problems": link_batch_problems(batch=batch),
        "running": done < total,
        "per_second": settings.LINK_BULK_PER_SECOND,
        "give_up_hours": int(settings.NOTICE_GIVE_UP_AFTER.total_seconds() // 3600),
    }
    return TemplateResponse(request, "admin/institutions/institution/link_batch.html", context)


TEMPLATE_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}


def import_template_view(request, model_admin, file_format: str):
    """The import's columns with one example row, to fill in (CSV or XLSX)."""
    if not model_admin.has_import_permission(request):
        raise missing_permission("institutions.add_institution", doing="Downloading the import template")
    if file_format not in TEMPLATE_TYPES:
        raise Http404("No such template: institutions-import.csv or institutions-import.xlsx")
    response = HttpResponse(import_template(file_format=file_format), content_type=TEMPLATE_TYPES[file_format])
    response["Content-Disposition"] = f'attachment; filename="institutions-import.{file_format}"'
    return response


# The pages behind the institution page's buttons (pages.py), as (path, view, name after the model's prefix).
BUTTON_PAGES = (
    ("send-link", pages.send_link_view, "send_link"),
    ("send-reminder", pages.send_reminder_view, "send_reminder"),
    ("check-key", pages.check_key_view, "check_key"),
    ("revoke-key", pages.revoke_key_view, "revoke_key"),
    ("add-key", pages.add_key_view, "add_key"),
    ("add-submitter-contact", pages.add_submitter_contact_view, "add_submitter_contact"),
)

# --------------------------------------------------------------------------
# The extension
# --------------------------------------------------------------------------


class KeysExtension(InstitutionAdminExtension):
    """An institution's keys in its admin: registered by StaffAdminConfig.ready."""

    media = forms.Media(css=STAFF_CSS)

    def list_display(self, list_display):
        return insert_after(list_display, "name", *KEY_COLUMNS)

    def list_filter(self, list_filter):
        own = insert_after(insert_after(list_filter, "status", RegionFilter), ServedFilter, RemindersEndedFilter)
        return (ExpiryFilter, KeyCheckFilter, ReminderFilter, *own)

    def queryset(self, request, queryset):
        return institutions_with_key_status(queryset=queryset)

    def inlines(self, inlines):
        return (*inlines, KeyHistoryInline, SubmissionLinkInline)

    def fieldsets(self, fieldsets):
        *main, record = fieldsets
        return (CURRENT_KEY_FIELDSET, *main, TIMELINE_FIELDSET, record)

    def readonly_fields(self, readonly_fields):
        return (key_summary, timeline, *readonly_fields)

    def actions(self, request):
        user = request.user
        return [
            action
            for action, permission in ((send_submission_links, SEND_LINK_PERMISSION), (export_csv, EXPORT_PERMISSION))
            if user.has_perm(permission)
        ]

    def urls(self, model_admin):
        def wrap(view):
            def wrapped(request, **kwargs):
                return view(request, model_admin, **kwargs)

            return model_admin.admin_site.admin_view(wrapped)

        prefix = f"{model_admin.opts.app_label}_{model_admin.opts.model_name}"
        return [
            path("link-batch/<int:batch_id>/", wrap(link_batch_view), name=f"{prefix}_link_batch"),
            path(
                "import/institutions-import.<str:file_format>",
                wrap(import_template_view),
                name=f"{prefix}_import_template",
            ),
            *(
                path(f"<path:object_id>/{route}/", wrap(view), name=f"{prefix}_{name}")
                for route, view, name in BUTTON_PAGES
            ),
        ]

    def change_context(self, request, object_id):
        institution = Institution.objects.filter(pk=object_id).first() if str(object_id).isdigit() else None
        return pages.staff_actions(request, institution)

    def import_resources(self):
        # Bulk onboarding (credentials/services/onboarding.py): upload, preview every row, confirm.
        return (InstitutionResource,)

    def import_formats(self):
        # Only CSV and XLSX, read within the limits of credentials/services/spreadsheets.py.
        return (BoundedCSV, BoundedXLSX)

    def import_refusal(self, error):
        return str(error) if isinstance(error, UploadRefused) else None

    def import_context(self, request):
        return {
            "import_guide": IMPORT_GUIDE,
            "import_limits": import_limits(),
            "import_templates": [
                (label, reverse("admin:institutions_institution_import_template", args=[file_format]))
                for file_format, label in (("csv", "CSV"), ("xlsx", "XLSX"))
            ],
        }
