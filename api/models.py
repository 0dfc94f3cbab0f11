"""Service accounts (machines such as the data pipeline) and their API tokens.

A token is 256 random bits; only its SHA-256 is stored (like a submission
link's), with a short non-secret prefix to recognise it by. Scopes are on the
token, the institutions it may see and the address allow-list on the account.
"""

from __future__ import annotations

import datetime as dt
import ipaddress

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from credentials.fields import EncryptedTextField
from credentials.formatting import format_moment


class Scope(models.TextChoices):
    KEYS_READ = "keys:read", "keys:read: fetch a Secret"
    KEYS_LIST = "keys:list", "keys:list: list key metadata, no Secrets"
    SYNCS_WRITE = "syncs:write", "syncs:write: report sync outcomes"


def parse_networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """One IP address or CIDR network per line (or comma-separated); ValueError on a bad entry."""
    entries = [part.strip() for line in (text or "").splitlines() for part in line.split(",")]
    return [ipaddress.ip_network(entry, strict=False) for entry in entries if entry]


def validate_networks(text: str) -> None:
    try:
        parse_networks(text)
    except ValueError as exc:
        raise ValidationError(f"Not an IP address or network: {exc}") from None


def validate_scopes(value) -> None:
    if not isinstance(value, list) or not value or any(scope not in Scope.values for scope in value):
        raise ValidationError(f"Scopes must be a non-empty list of: {', '.join(Scope.values)}.")


class ServiceAccount(models.Model):
    """A machine that calls the API, e.g. "airflow-prod". Deactivate it rather than deleting it."""

    # Requests per minute when the account sets none: a pipeline polls and
    # reads a handful of keys, far below this.
    DEFAULT_RATE_PER_MINUTE = 120

    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    is_active = models.BooleanField(default=True, help_text="Off: every token of this account is refused.")
    all_institutions = models.BooleanField(
        default=False, help_text="Sees every institution. Off: only the institutions chosen below."
    )
    institutions = models.ManyToManyField("institutions.Institution", blank=True, related_name="service_accounts")
    allowed_ips = models.TextField(
        blank=True,
        validators=[validate_networks],
        help_text="One IP address or network (CIDR) per line. Empty: any address.",
    )
    rate_per_minute = models.PositiveIntegerField(default=DEFAULT_RATE_PER_MINUTE)
    # Webhooks (api/webhooks.py): key events are POSTed here, signed with the
    # secret, which is shown once when set or rotated and never again.
    webhook_url = models.URLField(
        max_length=500,
        blank=True,
        help_text="https:// address on a public host that receives key events. Empty: no webhooks.",
    )
    webhook_secret = EncryptedTextField(blank=True, editable=False)
    webhook_secret_set_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    # For DRF: an authenticated request's user is the account (IsAuthenticated, throttles).
    is_authenticated = True

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name

    def ip_allowed(self, ip_address: str | None) -> bool:
        networks = parse_networks(self.allowed_ips)
        if not networks:
            return True
        if not ip_address:
            return False
        try:
            address = ipaddress.ip_address(ip_address)
        except ValueError:
            return False
        return any(address in network for network in networks)


class ApiToken(models.Model):
    account = models.ForeignKey(ServiceAccount, on_delete=models.CASCADE, related_name="tokens")
    prefix = models.CharField(max_length=20, unique=True, help_text="The token's first characters: not secret.")
    token_hash = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(validators=[validate_scopes])
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    last_used_ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.account}, {self.state()})"

    def state(self, now: dt.datetime | None = None) -> str:
        now = now or timezone.now()
        if self.revoked_at:
            return "revoked"
        if now >= self.expires_at:
            return "expired"
        return "usable"

    def is_usable(self, now: dt.datetime | None = None) -> bool:
        return self.state(now) == "usable" and self.account.is_active

    def has_scope(self, scope: str) -> bool:
        return scope in (self.scopes or [])


class SyncReport(models.Model):
    """What the pipeline reported after a sync with a key (POST .../syncs)."""

    class Outcome(models.TextChoices):
        OK = "ok", "OK"
        AUTH_FAILED = "auth_failed", "Authentication failed (401)"
        FORBIDDEN = "forbidden", "Forbidden (403)"
        ERROR = "error", "Other error"

    account = models.ForeignKey(ServiceAccount, null=True, on_delete=models.SET_NULL, related_name="+")
    institution = models.ForeignKey("institutions.Institution", on_delete=models.CASCADE, related_name="+")
    credential = models.ForeignKey(
        "credentials.CD2Credential", null=True, on_delete=models.SET_NULL, related_name="sync_reports"
    )
    outcome = models.CharField(max_length=12, choices=Outcome.choices)
    detail = models.CharField(max_length=500, blank=True, help_text="As reported, with anything secret-looking masked.")
    check_queued = models.BooleanField(default=False, help_text="A check of the key against CD2 was queued.")
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"{self.get_outcome_display()} for {self.institution} at {format_moment(self.created_at)}"
