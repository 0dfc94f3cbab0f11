"""The outbox in the admin: every notice, read-only, filtered by state, kind and institution; one-click resend."""

from __future__ import annotations

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_http_methods

from credentials.admin import pages
from credentials.admin.common import STAFF_CSS, ConfirmRow, ViewOnlyAdmin
from credentials.formatting import format_day
from credentials.mail.recipients import contact_emails, reminder_addressees
from credentials.models import Notice, secret_fields_of, step_label
from credentials.services import outbox
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


def _addressees(notice: Notice) -> list[str]:
    """Who a resend would reach now: the sender's own rule for a reminder or a link, else the notice's recipients."""
    institution = notice.institution
    if institution is not None and notice.kind in (Notice.Kind.REMINDER, Notice.Kind.KEY_INVALID):
        return reminder_addressees(institution=institution)
    if institution is not None and notice.kind == Notice.Kind.SUBMISSION_LINK:
        asked = notice.payload.get("to")
        return [asked] if asked else contact_emails(institution)
    return [address.strip() for address in notice.recipients.split(",") if address.strip()]


@require_http_methods(["GET", "POST"])
def resend_view(request: HttpRequest, model_admin, object_id) -> HttpResponse:
    """Resend a notice that failed for good: a page that says who gets what first, then the send on "Yes, resend"."""
    if not request.user.has_perm(RESEND_PERMISSION):
        raise missing_permission(RESEND_PERMISSION, doing="Resending a notice")
    notice = pages.object_or_404(Notice.objects.select_related("institution", "reminder"), object_id)
    # Back to the dashboard when asked from there; never to an address taken from the request.
    from_dashboard = request.GET.get("next", request.POST.get("next")) == reverse("admin:index")
    back = reverse("admin:index" if from_dashboard else "admin:credentials_notice_changelist")
    if notice.state != Notice.State.FAILED:
        messages.error(request, "Only a notice that failed for good can be resent.")
        return HttpResponseRedirect(back)
    if not pages.confirmed(request):
        to = _addressees(notice)
        about = f"{notice.get_kind_display()} of {format_day(notice.day)}"
        failed_with = notice.error_in_words() or "no reason recorded"
        if notice.reminder_id:
            about += f" ({step_label(notice.reminder.threshold)})"
        return pages.confirm_page(
            request,
            model_admin,
            context={
                "title": f"Resend: {notice.get_kind_display().lower()}?",
                "what": f"{about}, sent again now. It failed before: {failed_with}.",
                "rows": [ConfirmRow(institution=notice.institution, recipients=tuple(to))]
                if to and notice.institution
                else [],
                "recipients_plain": to if not notice.institution else [],
                "nobody": [notice.institution] if notice.institution and not to else [],
                "hidden": [("next", reverse("admin:index"))] if from_dashboard else [],
                "cancel_url": back,
                "parent_url": reverse("admin:credentials_notice_change", args=[notice.pk]),
                "parent_label": str(notice),
                "confirm_label": "Yes, resend",
            },
        )
    if not notice_resend(notice_id=notice.pk):
        messages.error(request, "Only a notice that failed for good can be resent.")
        return HttpResponseRedirect(back)
    # Delivered now, for staff's answer (the queued task then finds it done); a refusal is retried.
    outbox.notice_deliver(notice_id=notice.pk)
    notice.refresh_from_db()
    if notice.state == Notice.State.SENT:
        count = len([a for a in notice.recipients.split(",") if a.strip()])
        messages.success(
            request,
            f"{notice.get_kind_display()} sent again to {notice.recipients} "
            f"({count} address{'' if count == 1 else 'es'}).",
        )
    elif notice.state in Notice.OPEN_STATES:
        messages.warning(request, f"{notice.get_kind_display()} queued again; the outbox retries it automatically.")
    else:
        messages.error(request, f"{notice.get_kind_display()} was not sent: {notice.get_state_display().lower()}.")
    return HttpResponseRedirect(back)
