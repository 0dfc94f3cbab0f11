"""The institution list and page: the staff cockpit (key state, buttons, history, export)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.views.main import ORDER_VAR, ChangeList
from django.core.paginator import Paginator
from django.db.models import Exists, F, OuterRef, Q
from django.http import HttpResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join

from credentials.admin import pages
from credentials.admin.common import STAFF_CSS, ViewOnlyMixin, key_state_badge, link_state_badge
from credentials.models import SECRET_FIELDS, CD2Credential, ReminderLog, SubmissionLink, secret_fields_of
from credentials.notifications import expiry_phrase
from credentials.selectors import KeyState, institutions_with_key_status
from credentials.services.links import submission_link_send
from credentials.services.staff import (
    EXPORT_PERMISSION,
    SEND_LINK_PERMISSION,
    StaffActionRefused,
    institutions_export,
)
from edpotential.security import client_ip
from institutions.models import Contact, Institution

# --------------------------------------------------------------------------
# List filters
# --------------------------------------------------------------------------


class ExpiryFilter(admin.SimpleListFilter):
    title = "expiry"
    parameter_name = "expiry"

    def lookups(self, request, model_admin):
        return (
            ("expired", "Expired"),
            ("7", "7 days or less"),
            ("30", "30 days or less"),
            ("90", "90 days or less"),
            ("ok", f"OK (more than {settings.CD2_EXPIRING_DAYS} days)"),
            ("none", "No active key"),
        )

    def queryset(self, request, queryset):
        value = self.value()
        if value == "expired":
            return queryset.filter(days_left__lt=0)
        if value in ("7", "30", "90"):
            return queryset.filter(days_left__gte=0, days_left__lte=int(value))
        if value == "ok":
            return queryset.filter(expiry_state="ok")
        if value == "none":
            return queryset.filter(active_key_id__isnull=True)
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
        value = self.value()
        if value == "failing":
            return queryset.filter(key_state=KeyState.FAILING)
        if value == "pending":
            return queryset.filter(key_state=KeyState.PENDING)
        if value == "never":
            return queryset.filter(active_key_id__isnull=False, active_last_verified_at__isnull=True)
        if value == "missing":
            return queryset.filter(key_state__in=(KeyState.MISSING, KeyState.PENDING))
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
        regions = CD2Credential.objects.active().order_by("region").values_list("region", flat=True).distinct()
        return [(region, region) for region in regions]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(active_region=self.value())
        return queryset


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


# Filters that read the key annotations; without them the list counts plain institutions.
KEY_FILTERS = (ExpiryFilter, KeyCheckFilter, RegionFilter)


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
        return f"{who}, {timezone.localtime(obj.submitted_at):%d %b %Y %H:%M}"

    @admin.display(description="Last check")
    def last_check(self, obj: CD2Credential) -> str:
        if not obj.last_verified_at:
            return obj.last_verification or "never"
        return f"{timezone.localtime(obj.last_verified_at):%d %b %Y %H:%M}: {obj.last_verification}"


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
        constraint), so the LEFT JOIN to it never changes the count; only
        the expiry, check and region filters read it.
        """
        filter_specs, _, remaining_lookup_params, _, _ = self.get_filters(request)
        if remaining_lookup_params or any(isinstance(spec, KEY_FILTERS) and spec.value() for spec in filter_specs):
            return None
        annotated = self.root_queryset
        self.root_queryset = self.model_admin.plain_queryset(request)
        try:
            return self.get_queryset(request).order_by()
        finally:
            self.root_queryset = annotated

    def get_results(self, request):
        count_queryset = self.count_queryset(request)
        if count_queryset is not None:
            self.queryset = self.queryset.all()
            self.queryset.count_queryset = count_queryset
        super().get_results(request)

    def get_ordering_field_columns(self):
        # Without ?o= the list is in get_ordering's order (soonest expiry
        # first); mark that column, not the Meta ordering's "name".
        if ORDER_VAR not in self.params and "expires_on" in self.list_display:
            return {self.list_display.index("expires_on"): "asc"}
        return super().get_ordering_field_columns()


@admin.register(Institution)
class InstitutionAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "canvas_domain",
        "key_status",
        "expires_on",
        "days_left_display",
        "last_checked",
        "account_owner",
    )
    list_select_related = ("account_owner",)
    list_filter = (
        ExpiryFilter,
        KeyCheckFilter,
        ServedFilter,
        "status",
        RegionFilter,
        ("account_owner", AccountOwnerFilter),
    )
    search_fields = ("name", "slug", "canvas_domain", "contacts__email")
    search_help_text = "Search by name, slug, Canvas domain or a contact's email."
    list_per_page = 50
    # No second COUNT over every institution for "(N total)"; the filtered count stays.
    show_full_result_count = False
    paginator = CountQuerysetPaginator
    empty_value_display = "—"
    prepopulated_fields = {"slug": ("name",)}
    inlines = (ContactInline, KeyHistoryInline, SubmissionLinkInline)
    readonly_fields = ("key_summary", "reminder_log", "created_at", "updated_at")
    fieldsets = (
        ("Current key", {"fields": ("key_summary",)}),
        (None, {"fields": ("name", "slug", "canvas_domain", "status", "timezone", "account_owner", "notes")}),
        ("Reminders sent", {"fields": ("reminder_log",)}),
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
            return (F("active_expires_on").asc(nulls_last=True), "name")
        return ("name",)

    def get_changelist(self, request, **kwargs):
        return InstitutionChangeList

    def plain_queryset(self, request):
        """Institutions as the list would show them, without the key annotations (for counting)."""
        return super().get_queryset(request)

    def get_queryset(self, request):
        return institutions_with_key_status(queryset=self.plain_queryset(request))

    # -- list columns -----------------------------------------------------

    @admin.display(description="Key status", ordering="key_state")
    def key_status(self, obj: Institution) -> str:
        return key_state_badge(obj.key_state)

    @admin.display(description="Expires on", ordering="active_expires_on")
    def expires_on(self, obj: Institution):
        return obj.active_expires_on

    @admin.display(description="Days left", ordering=F("days_left").asc(nulls_last=True))
    def days_left_display(self, obj: Institution) -> str:
        if obj.days_left is None:
            return "—"
        if obj.days_left < 0:
            return f"{-obj.days_left} overdue"
        return str(obj.days_left)

    @admin.display(description="Last checked", ordering=F("active_last_verified_at").desc(nulls_last=True))
    def last_checked(self, obj: Institution) -> str:
        # The date only, to keep the list narrow; the result is in the tooltip
        # and a failed check already shows in the badge.
        if not obj.active_last_verified_at:
            return "never" if obj.active_key_id else "—"
        when = timezone.localtime(obj.active_last_verified_at)
        return format_html('<span title="{}">{}</span>', obj.active_last_verification, f"{when:%d %b %Y}")

    # -- change page ------------------------------------------------------

    @admin.display(description="Status")
    def key_summary(self, obj: Institution) -> str:
        if obj.pk is None:
            return "—"
        badge = key_state_badge(obj.key_state)
        if not obj.active_key_id:
            return badge
        return format_html(
            '{} <a href="{}">{}</a> · expires {} ({}) · region {}',
            badge,
            reverse("admin:credentials_cd2credential_change", args=[obj.active_key_id]),
            obj.active_hint,
            f"{obj.active_expires_on:%d %b %Y}",
            expiry_phrase(obj.days_left),
            obj.active_region,
        )

    @admin.display(description="Reminder log")
    def reminder_log(self, obj: Institution) -> str:
        if obj.pk is None:
            return "—"
        rows = (
            ReminderLog.objects.filter(credential__institution=obj)
            .select_related("credential")
            .defer(*secret_fields_of("credential"))
            .order_by("-claimed_at")[:30]
        )

        def when(value):
            return f"{timezone.localtime(value):%d %b %Y %H:%M}" if value else "—"

        body = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    r.credential.hint,
                    r.step_label(),
                    when(r.sent_at) if r.state == ReminderLog.State.SENT else r.get_state_display().lower(),
                    r.recipients or "—",
                    r.last_error or "",
                )
                for r in rows
            ),
        )
        if not body:
            return "No reminders sent yet."
        return format_html(
            '<table class="reminder-log"><thead><tr><th>Key</th><th>Step</th><th>Sent</th><th>To</th>'
            "<th>Error</th></tr></thead><tbody>{}</tbody></table>",
            body,
        )

    def get_urls(self):
        def wrap(view):
            def wrapped(request, object_id):
                return view(request, self, object_id)

            return self.admin_site.admin_view(wrapped)

        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("<path:object_id>/send-link/", wrap(pages.send_link_view), name=f"{prefix}_send_link"),
            path(
                "<path:object_id>/send-reminder/",
                wrap(pages.send_reminder_view),
                name=f"{prefix}_send_reminder",
            ),
            path("<path:object_id>/check-key/", wrap(pages.check_key_view), name=f"{prefix}_check_key"),
            path("<path:object_id>/revoke-key/", wrap(pages.revoke_key_view), name=f"{prefix}_revoke_key"),
            path("<path:object_id>/add-key/", wrap(pages.add_key_view), name=f"{prefix}_add_key"),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), **pages.staff_actions(request)}
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
        sent, problems = 0, []
        for institution in queryset:
            try:
                submission_link_send(institution=institution, created_by=request.user, ip_address=client_ip(request))
            except ValueError as exc:
                problems.append(f"{institution.name}: {exc}")
            else:
                sent += 1
        if sent:
            self.message_user(request, f"Sent a submission link to {sent} institution(s).", messages.SUCCESS)
        for problem in problems:
            self.message_user(request, problem, messages.ERROR)
