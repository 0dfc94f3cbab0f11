"""The outbox in the admin: every notice, read-only, filtered by state, kind and institution; one-click resend."""

from __future__ import annotations

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from credentials.admin.common import STAFF_CSS, ViewOnlyAdmin
from credentials.formatting import format_day
from credentials.models import Notice, secret_fields_of, step_label
from credentials.services.outbox import notice_resend
from safeadmin.permissions import missing_permission

RESEND_PERMISSION = "credentials.resend_notice"


@admin.register(Notice)
class NoticeAdmin(ViewOnlyAdmin):
    list_display = ("created_at", "kind", "state", "institution", "about", "recipients", "error", "attempts", "resend")
    list_filter = ("state", "kind", ("institution", admin.RelatedOnlyFieldListFilter), "day")
    list_select_related = ("institution", "reminder", "credential", "user")
    search_fields = ("institution__name", "recipients")
    date_hierarchy = "created_at"
    fieldsets = (
        ("What", {"fields": ("kind", "institution", "credential", "reminder", "user", "day", "recipients")}),
        (
            "Delivery",
            {
                "fields": (
                    "state",
                    "created_at",
                    "attempts",
                    "next_attempt_at",
                    "lease_until",
                    "retry_until",
                    "sent_at",
                    "closed_at",
                    "error",
                    "raw_error",
                )
            },
        ),
    )
    # Every field shown is read-only: services write notices, staff only read them (and resend).
    readonly_fields = tuple(name for _, options in fieldsets for name in options["fields"])

    def get_queryset(self, request):
        return super().get_queryset(request).defer(*secret_fields_of("credential"))

    @admin.display(description="About")
    def about(self, obj: Notice) -> str:
        if obj.reminder_id:
            return f"{obj.credential.hint}, {step_label(obj.reminder.threshold)}"
        return format_day(obj.day)

    @admin.display(description="Error")
    def error(self, obj: Notice) -> str:
        return obj.error_in_words()

    @admin.display(description="Error as the mail server said it")
    def raw_error(self, obj: Notice) -> str:
        # The exception as recorded, for staff who dig: marked so the admin crawl knows it is meant.
        return format_html('<code class="raw-error">{}</code>', obj.last_error) if obj.last_error else "—"

    @admin.display(description="")
    def resend(self, obj: Notice) -> str:
        if obj.state != Notice.State.FAILED:
            return ""
        return format_html('<a href="{}">Resend…</a>', reverse("admin:credentials_notice_change", args=[obj.pk]))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "can_resend": request.user.has_perm(RESEND_PERMISSION)}
        return super().change_view(request, object_id, form_url, extra_context)

    def get_urls(self):
        def resend(request, object_id):
            return resend_view(request, self, object_id)

        return [
            path("<path:object_id>/resend/", self.admin_site.admin_view(resend), name="credentials_notice_resend"),
            *super().get_urls(),
        ]

    class Media:
        css = STAFF_CSS


@require_POST
def resend_view(request: HttpRequest, model_admin, object_id) -> HttpResponse:
    notice = get_object_or_404(Notice, pk=object_id)
    if not request.user.has_perm(RESEND_PERMISSION):
        raise missing_permission(RESEND_PERMISSION, doing="Resending a notice")
    if notice_resend(notice_id=notice.pk):
        messages.success(request, f"{notice.get_kind_display()} queued again; it goes out within minutes.")
    else:
        messages.error(request, "Only a notice that failed for good can be resent.")
    # Back to the dashboard when asked from there; never to an address taken from the request.
    back = (
        "admin:index" if request.POST.get("next") == reverse("admin:index") else "admin:credentials_notice_changelist"
    )
    return HttpResponseRedirect(reverse(back))
