"""Who signed in with the identity provider, and which accounts may still use a password."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from credentials.fields import EncryptedTextField
from credentials.formatting import format_moment


class StaffIdentity(models.Model):
    """A staff user as the identity provider knows them: matched by issuer and subject, never by email.

    An email address can be reassigned at the provider; the subject cannot.
    `last_seen_at` moves at each sign-in and each successful re-validation;
    the daily job deactivates a user not seen for OIDC_DEACTIVATE_AFTER_DAYS.
    `roles` is what the provider's groups gave at the last sign-in: the only
    roles the user holds (anything added here is taken away again).
    """

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sso_identity")
    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    email = models.EmailField(max_length=254, blank=True)
    roles = models.JSONField(default=list, blank=True)
    first_sign_in_at = models.DateTimeField(default=timezone.now)
    last_sign_in_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now, db_index=True)
    deactivated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "identity provider account"
        constraints = [models.UniqueConstraint(fields=("issuer", "subject"), name="one_user_per_provider_subject")]

    def __str__(self) -> str:
        return f"{self.email or self.subject} (last seen {format_moment(self.last_seen_at)})"


class BreakGlassAccount(models.Model):
    """A superuser who may still sign in with a password and one-time code while SSO is on.

    For when the identity provider is down or misconfigured. Each such
    sign-in is audited and mailed to every superuser.
    """

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="break_glass")
    reason = models.CharField(max_length=300, help_text="Why this account keeps a password (kept in the audit log).")
    marked_at = models.DateTimeField(default=timezone.now)
    marked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        verbose_name = "break-glass account"

    def __str__(self) -> str:
        return f"Break-glass: {self.user.get_username()}"


class ProviderSession(models.Model):
    """One browser session signed in with the provider: what re-validates it, outside the Django session.

    The refresh token lives here, encrypted like the CD2 keys, not in the
    session: a session is saved by every request (SESSION_SAVE_EVERY_REQUEST),
    so two requests at once would write back a refresh token the provider has
    already replaced. Re-validation locks this row instead, so one request
    asks the provider and the others see it done.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    identity = models.ForeignKey(StaffIdentity, on_delete=models.CASCADE, related_name="sessions")
    started_at = models.DateTimeField(default=timezone.now)
    validated_at = models.DateTimeField(default=timezone.now)
    # Failed attempts to reach the provider since validated_at (it was down, not refusing).
    unreachable_since = models.DateTimeField(null=True, blank=True)
    # The provider's amr showed a second factor (OIDC_REQUIRE_MFA): no TOTP step here.
    mfa_by_provider = models.BooleanField(default=False)
    refresh_token = EncryptedTextField(blank=True, default="")
    access_token = EncryptedTextField(blank=True, default="")
    ended_at = models.DateTimeField(null=True, blank=True)
    ended_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        verbose_name = "identity provider session"

    def __str__(self) -> str:
        return f"Provider session of {self.identity} since {format_moment(self.started_at)}"
