"""Service accounts, tokens and sync reports in the staff admin: superusers only.

A token is issued through the add form; its plaintext is shown once on the
page that answers the form (never in a message, which would sit in a cookie
or the session) and cannot be seen again. A webhook signing secret is the
same: the "Rotate webhook signing secret" action shows it on the page that
answers the action, once. Issuing, revoking and rotating are audited by the
services they call.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from api.models import ApiToken, Scope, ServiceAccount, SyncReport
from api.services import DEFAULT_TOKEN_DAYS, MAX_TOKEN_DAYS, api_token_issue, api_token_revoke
from api.webhooks import webhook_delivery_log, webhook_secret_rotate, webhook_url_check
from credentials.formatting import format_moment
from requestinfo import client_ip
from safeadmin.lists import SafeFilterValuesMixin


class SuperuserOnly(SafeFilterValuesMixin):
    def _superuser(self, request) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_module_permission(self, request) -> bool:
        return self._superuser(request)

    def has_view_permission(self, request, obj=None) -> bool:
        return self._superuser(request)

    def has_add_permission(self, request, *args) -> bool:
        return self._superuser(request)

    def has_change_permission(self, request, obj=None) -> bool:
        return self._superuser(request)

    def has_delete_permission(self, request, obj=None) -> bool:
        return self._superuser(request)


class TokenInline(SuperuserOnly, admin.TabularInline):
    model = ApiToken
    extra = 0
    fields = ("prefix", "scopes", "created_at", "expires_at", "revoked_at", "last_used_at", "last_used_ip")
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class ServiceAccountForm(forms.ModelForm):
    webhook_url = forms.URLField(
        required=False,
        max_length=500,
        assume_scheme="https",
        help_text=ServiceAccount._meta.get_field("webhook_url").help_text,
    )

    class Meta:
        model = ServiceAccount
        fields = (
            "name",
            "description",
            "is_active",
            "all_institutions",
            "institutions",
            "allowed_ips",
            "rate_per_minute",
            "webhook_url",
        )

    def clean_webhook_url(self) -> str:
        url = self.cleaned_data.get("webhook_url", "")
        if url:
            webhook_url_check(url)  # https on a public address (SSRF), checked again before each send
        return url


@admin.register(ServiceAccount)
class ServiceAccountAdmin(SuperuserOnly, admin.ModelAdmin):
    form = ServiceAccountForm
    list_display = ("name", "is_active", "all_institutions", "rate_per_minute", "webhook_display", "created_at")
    list_filter = ("is_active", "all_institutions")
    search_fields = ("name", "description")
    filter_horizontal = ("institutions",)
    readonly_fields = ("created_at", "created_by", "webhook_secret_state", "webhook_log")
    inlines = (TokenInline,)
    actions = ("rotate_webhook_secret",)
    fieldsets = (
        (None, {"fields": ("name", "description", "is_active")}),
        ("What it may see", {"fields": ("all_institutions", "institutions")}),
        ("Limits", {"fields": ("allowed_ips", "rate_per_minute")}),
        ("Webhook", {"fields": ("webhook_url", "webhook_secret_state", "webhook_log")}),
        ("Record", {"fields": ("created_at", "created_by"), "classes": ("collapse",)}),
    )

    def get_queryset(self, request):
        # The list never needs the signing secret; the change page reads none of it either.
        return super().get_queryset(request).defer("webhook_secret")

    def save_model(self, request, obj, form, change) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    @admin.display(description="Webhook")
    def webhook_display(self, obj: ServiceAccount) -> str:
        if not obj.webhook_url:
            return "-"
        return "on" if obj.webhook_secret_set_at else "no secret yet"

    @admin.display(description="Signing secret")
    def webhook_secret_state(self, obj: ServiceAccount) -> str:
        if obj.webhook_secret_set_at:
            return f"Set on {format_moment(obj.webhook_secret_set_at)}; it is never shown again."
        return 'None yet: no events are sent until the action "Rotate webhook signing secret" gives it one.'

    @admin.display(description="Recent deliveries")
    def webhook_log(self, obj: ServiceAccount):
        if obj.pk is None:
            return "-"
        rows = webhook_delivery_log(account=obj)
        if not rows:
            return "No webhook sent yet."
        body = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    notice.payload["body"]["type"],
                    notice.payload["body"]["institution"],
                    notice.payload["body"]["id"],
                    notice.get_state_display(),
                    notice.attempts,
                    notice.last_error or "-",
                    format_moment(notice.sent_at) or "-",
                )
                for notice in rows
            ),
        )
        return format_html(
            "<table><tr><th>Event</th><th>Institution</th><th>Event id</th><th>State</th>"
            "<th>Attempts</th><th>Last error</th><th>Sent at</th></tr>{}</table>",
            body,
        )

    @admin.action(description="Rotate webhook signing secret (shown once)")
    def rotate_webhook_secret(self, request, queryset):
        """Asks first (the old secret stops at once, so the receiver refuses events until it has the new one)."""
        accounts = list(queryset.order_by("name"))
        context = {**self.admin_site.each_context(request), "opts": self.opts, "title": "Webhook signing secret"}
        if request.POST.get("confirm") != "yes":
            return TemplateResponse(
                request,
                "admin/api/webhook_secret_confirm.html",
                {**context, "accounts": accounts, "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME},
            )
        ip_address = client_ip(request)
        rotated = [
            (account, webhook_secret_rotate(account=account, actor=request.user, ip_address=ip_address))
            for account in accounts
        ]
        return TemplateResponse(request, "admin/api/webhook_secret.html", {**context, "rotated": rotated})


class TokenAddForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(choices=Scope.choices, widget=forms.CheckboxSelectMultiple)
    expires_in_days = forms.IntegerField(min_value=1, max_value=MAX_TOKEN_DAYS, initial=DEFAULT_TOKEN_DAYS)

    class Meta:
        model = ApiToken
        fields = ("account",)


@admin.register(ApiToken)
class ApiTokenAdmin(SuperuserOnly, admin.ModelAdmin):
    list_display = ("prefix", "account", "scope_list", "state_display", "expires_at", "last_used_at", "last_used_ip")
    list_filter = ("account",)
    search_fields = ("prefix", "account__name")
    list_select_related = ("account",)
    actions = ("revoke_tokens",)

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = TokenAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("account", "scopes", "expires_in_days")
        return (
            "account",
            "prefix",
            "scopes",
            "created_at",
            "created_by",
            "expires_at",
            "revoked_at",
            "last_used_at",
            "last_used_ip",
        )

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.get_fields(request, obj)

    @admin.display(description="Scopes")
    def scope_list(self, obj: ApiToken) -> str:
        return ", ".join(obj.scopes or [])

    @admin.display(description="State")
    def state_display(self, obj: ApiToken) -> str:
        return obj.state()

    def save_form(self, request, form, change):
        if change:
            return super().save_form(request, form, change)
        # The add form issues the token through the service; the admin then
        # logs the addition and answers with response_add.
        issued = api_token_issue(
            account=form.cleaned_data["account"],
            scopes=form.cleaned_data["scopes"],
            expires_in_days=form.cleaned_data["expires_in_days"],
            created_by=request.user,
            ip_address=client_ip(request),
        )
        request._issued_token = issued  # for response_add, this request only
        return issued.token

    def save_model(self, request, obj, form, change) -> None:
        # Issued (saved) in save_form; nothing on an existing token is editable.
        return None

    def save_related(self, request, form, formsets, change) -> None:
        return None

    def response_add(self, request, obj, post_url_continue=None):
        issued = request._issued_token
        # The admin's views are never_cache already (Cache-Control: no-store ...).
        return TemplateResponse(
            request,
            "admin/api/token_created.html",
            {
                **self.admin_site.each_context(request),
                "title": "API token created",
                "opts": self.opts,
                "token": issued.token,
                "plaintext": issued.plaintext,
            },
        )

    @admin.action(description="Revoke selected tokens")
    def revoke_tokens(self, request, queryset) -> None:
        now = timezone.now()
        ip_address = client_ip(request)
        revoked = sum(
            api_token_revoke(token=token, actor=request.user, ip_address=ip_address, now=now)
            for token in queryset.select_related("account")
        )
        self.message_user(request, f"{revoked} token(s) revoked.", messages.SUCCESS)


@admin.register(SyncReport)
class SyncReportAdmin(SuperuserOnly, admin.ModelAdmin):
    list_display = ("created_at", "institution", "account", "outcome", "check_queued", "detail")
    list_filter = ("outcome", "check_queued")
    list_select_related = ("institution", "account")
    search_fields = ("institution__name", "institution__slug")

    def has_add_permission(self, request, *args) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
