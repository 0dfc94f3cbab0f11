"""The admin's extra pages: buttons on an institution, adding and revealing a key.

Thin doors: each view checks the permission, calls one service and says
what happened. The Secret is rendered on one page only, the audited reveal,
and never goes back into a form (password inputs do not render their value).
"""

from __future__ import annotations

import logging
import time

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers, patch_cache_control
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_http_methods, require_POST

from credentials.admin.common import ConfirmRow
from credentials.days import institution_key_days, institution_today
from credentials.mail.messages import SEND_ERRORS
from credentials.mail.recipients import contact_emails, reminder_addressees
from credentials.models import AuditEvent, CD2Credential, Notice
from credentials.selectors import current_key, submitters_not_on_file
from credentials.services import outbox
from credentials.services.audit import audit_record
from credentials.services.links import submission_link_send
from credentials.services.pending import VerifyResult, credential_verify_pending
from credentials.services.reminders import reminder_send_now
from credentials.services.staff import (
    ADD_CONTACT_PERMISSION,
    ADD_KEY_PERMISSION,
    CHECK_PERMISSION,
    MIN_REASON_LENGTH,
    REVEAL_PERMISSION,
    REVOKE_PERMISSION,
    SEND_LINK_PERMISSION,
    SEND_REMINDER_PERMISSION,
    StaffActionRefused,
    credential_reveal,
    credential_revoke,
    submitter_contact_add,
)
from credentials.services.submission import Door, credential_submit
from credentials.services.verification import credential_recheck_invalid, credential_verify
from institutions.models import Institution
from requestinfo import client_ip
from safeadmin.permissions import missing_permission
from staffsso.session import is_sso_session, reauth_url

logger = logging.getLogger(__name__)

# Re-entering the password opens a short window, so a staff member who left
# a session open does not leave the Secrets open with it.
REAUTH_SESSION_KEY = "staff_reauth_at"
REAUTH_MAX_AGE_SECONDS = 5 * 60
REAUTH_FAILURES_SESSION_KEY = "staff_reauth_failures"
# After this many wrong passwords in a row the session is logged out.
REAUTH_MAX_FAILURES = 5


def reauth_is_fresh(request: HttpRequest) -> bool:
    at = request.session.get(REAUTH_SESSION_KEY)
    return isinstance(at, int | float) and 0 <= time.time() - at < REAUTH_MAX_AGE_SECONDS


def reauth_mark(request: HttpRequest) -> None:
    request.session[REAUTH_SESSION_KEY] = time.time()
    request.session.pop(REAUTH_FAILURES_SESSION_KEY, None)


def reauth_failed(request: HttpRequest, *, where: str, credential: CD2Credential | None = None) -> HttpResponse | None:
    """A wrong password where the admin asks for it again (the reveal, "Reset my authenticator"): audited, counted.

    The count is the session's, shared by both pages and cleared by the right
    password: the REAUTH_MAX_FAILURES-th wrong one in a row signs the session
    out (the redirect to the login page returned), so a stolen session
    cannot guess its way to a Secret or to enrolling its own authenticator.
    """
    failures = request.session.get(REAUTH_FAILURES_SESSION_KEY, 0) + 1
    audit_record(
        kind=AuditEvent.Kind.REAUTH_FAILED,
        actor=request.user,
        credential=credential,
        ip_address=client_ip(request),
        detail={"where": where, "failures_in_a_row": failures},
    )
    if failures >= REAUTH_MAX_FAILURES:
        logout(request)
        return HttpResponseRedirect(reverse("admin:login"))
    request.session[REAUTH_FAILURES_SESSION_KEY] = failures
    return None


def staff_actions(request: HttpRequest, institution: Institution | None = None) -> dict[str, object]:
    """Which buttons this staff member may see: the admin hides what a role cannot do."""
    user = request.user
    return {
        "can_send_link": user.has_perm(SEND_LINK_PERMISSION),
        "can_send_reminder": user.has_perm(SEND_REMINDER_PERMISSION),
        "can_check_key": user.has_perm(CHECK_PERMISSION),
        "can_revoke_key": user.has_perm(REVOKE_PERMISSION),
        "can_add_key": user.has_perm(ADD_KEY_PERMISSION),
        "submitters_not_on_file": (
            submitters_not_on_file(institution=institution)
            if institution is not None and user.has_perm(ADD_CONTACT_PERMISSION)
            else []
        ),
    }


def _require(request: HttpRequest, perm: str) -> None:
    if not request.user.has_perm(perm):
        raise missing_permission(perm)


def object_or_404(queryset, object_id):
    """The row, or 404 for a missing row and for an id that is not one (`/not-a-number/` is not a 500)."""
    try:
        object_id = queryset.model._meta.pk.to_python(object_id)
    except ValidationError:
        raise Http404 from None
    return get_object_or_404(queryset, pk=object_id)


def _institution(request: HttpRequest, model_admin, object_id) -> Institution:
    institution = object_or_404(Institution.objects.all(), object_id)
    if not model_admin.has_view_permission(request, institution):
        raise missing_permission("institutions.view_institution")
    return institution


def _back(institution: Institution) -> HttpResponseRedirect:
    return HttpResponseRedirect(reverse("admin:institutions_institution_change", args=[institution.pk]))


def _current_key(institution: Institution, *statuses: str) -> CD2Credential | None:
    return current_key(institution=institution, statuses=statuses)


# --------------------------------------------------------------------------
# One-click buttons on an institution (POST only)
# --------------------------------------------------------------------------


# Buttons that mail customers show who will receive what first, and send only on the
# confirmation's POST (CONFIRM_FIELD): a GET, or a POST without it (an old form, a replayed
# request), shows the page and sends nothing.
CONFIRM_FIELD = "confirm"


def confirmed(request: HttpRequest) -> bool:
    return request.method == "POST" and request.POST.get(CONFIRM_FIELD) == "yes"


def confirm_page(request: HttpRequest, model_admin, *, context: dict) -> TemplateResponse:
    """The page that lists who will receive what, with a "Yes, send" button that POSTs (CSRF) CONFIRM_FIELD=yes."""
    rows = context.get("rows", [])
    full = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "confirm_field": CONFIRM_FIELD,
        "recipient_count": sum(len(row.recipients) for row in rows),
        "institution_count": len(rows),
        **context,
    }
    return TemplateResponse(request, "admin/credentials/confirm_send.html", full)


def _institution_confirm(request, model_admin, institution: Institution, *, title: str, what: str, to: list[str]):
    row = ConfirmRow(institution=institution, recipients=tuple(to))
    return confirm_page(
        request,
        model_admin,
        context={
            "title": title,
            "what": what,
            "rows": [row] if to else [],
            "nobody": [] if to else [institution],
            "institution": institution,
            "cancel_url": reverse("admin:institutions_institution_change", args=[institution.pk]),
        },
    )


@require_http_methods(["GET", "POST"])
def send_link_view(request: HttpRequest, model_admin, object_id) -> HttpResponse:
    institution = _institution(request, model_admin, object_id)
    _require(request, SEND_LINK_PERMISSION)
    if not confirmed(request):
        return _institution_confirm(
            request,
            model_admin,
            institution,
            title=f"Send a submission link to {institution.name}?",
            what=f"A new submission link, valid for {settings.SUBMISSION_LINK_DAYS} days. It ends the link "
            f"sent before: only the newest link works.",
            to=contact_emails(institution),
        )
    try:
        notice = submission_link_send(institution=institution, created_by=request.user, ip_address=client_ip(request))
    except ValueError as exc:
        messages.error(request, str(exc))
        return _back(institution)
    # Delivered now, for staff's answer; a refused send stays in the outbox and is retried.
    outbox.notice_deliver(notice_id=notice.pk)
    notice.refresh_from_db()
    if notice.state == Notice.State.SENT:
        sent_to = [a for a in notice.recipients.split(", ") if a]
        messages.success(
            request,
            f"Submission link sent to {notice.recipients} ({len(sent_to)} address{'' if len(sent_to) == 1 else 'es'}); "
            f"it works for {notice.payload['days']} days.",
        )
    elif notice.state in Notice.OPEN_STATES:  # refused for now, or a sweep's sender has it
        why = notice.error_in_words() or "it is being sent"
        messages.warning(
            request,
            f"The mail server did not take the link yet ({why}). "
            f"It stays in the outbox and is retried automatically; nothing else to do.",
        )
    else:
        messages.error(
            request,
            f"The link was not sent: {notice.error_in_words()}."
            if notice.last_error
            else f"The link was not sent ({notice.get_state_display()}).",
        )
    return _back(institution)


@require_http_methods(["GET", "POST"])
def send_reminder_view(request: HttpRequest, model_admin, object_id) -> HttpResponse:
    institution = _institution(request, model_admin, object_id)
    _require(request, SEND_REMINDER_PERMISSION)
    credential = _current_key(institution, CD2Credential.Status.ACTIVE)
    if credential is None:
        messages.error(request, "There is no active key to remind about. Send a submission link instead.")
        return _back(institution)
    if not confirmed(request):
        days = institution_key_days(institution, expires_on=credential.expires_on, now=timezone.now())
        return _institution_confirm(
            request,
            model_admin,
            institution,
            title=f"Send the expiry reminder for key {credential.hint} now?",
            what=f"The expiry reminder about key {credential.hint} ({days.phrase}), with a new submission link "
            f"that ends the link sent before.",
            to=reminder_addressees(institution=institution),
        )
    try:
        sent = reminder_send_now(credential=credential, actor=request.user)
    except ValueError as exc:
        messages.error(request, str(exc))
    except SEND_ERRORS as exc:
        logger.warning("Reminder for key %s not sent: %s", credential.pk, type(exc).__name__)
        messages.error(request, f"The mail server refused the reminder ({type(exc).__name__}). Try again later.")
    else:
        count = len(sent.recipients)
        messages.success(
            request,
            f"Reminder about key {credential.hint} sent to {', '.join(sent.recipients)} "
            f"({count} address{'' if count == 1 else 'es'}).",
        )
    return _back(institution)


@require_POST
def check_key_view(request: HttpRequest, model_admin, object_id) -> HttpResponse:
    institution = _institution(request, model_admin, object_id)
    _require(request, CHECK_PERMISSION)
    active = _current_key(institution, CD2Credential.Status.ACTIVE)
    pending = _current_key(institution, CD2Credential.Status.PENDING_VERIFICATION)
    # A newer key waiting for its check is what staff want checked: it is
    # the institution's state ("Pending check") until it is settled.
    if active is not None and (pending is None or pending.submitted_at < active.submitted_at):
        result = credential_verify(credential_id=active.pk, actor=request.user)
        if result is None:
            messages.warning(request, f"Key {active.hint} stopped being active meanwhile; nothing was checked.")
        else:
            level = messages.SUCCESS if result.verdict == "ok" else messages.WARNING
            messages.add_message(request, level, f"Key {active.hint}: {result.message}")
        return _back(institution)
    if pending is None:
        return _check_invalid_key(request, institution)
    outcome = credential_verify_pending(credential_id=pending.pk, actor=request.user)
    text = {
        VerifyResult.ACTIVE: (messages.SUCCESS, "passed the check and is now the active key."),
        VerifyResult.INVALID: (
            messages.WARNING,
            "was refused by CD2 and is marked invalid; the customer was sent a new link.",
        ),
        VerifyResult.UNAVAILABLE: (
            messages.WARNING,
            "could not be checked: the CD2 gateway is unavailable. Try later.",
        ),
        VerifyResult.SUPERSEDED: (messages.INFO, "was superseded by a newer key meanwhile."),
        VerifyResult.WAITING: (
            messages.WARNING,
            "is still refused as “Canvas Data 2 not enabled”: it stays pending and is checked again daily.",
        ),
    }.get(outcome, (messages.INFO, "was already handled."))
    messages.add_message(request, text[0], f"Pending key {pending.hint} {text[1]}")
    return _back(institution)


def _check_invalid_key(request: HttpRequest, institution: Institution) -> HttpResponse:
    """ "Check key now" on a failing institution whose key was marked invalid: check it again, say what to do."""
    invalid = _current_key(institution, CD2Credential.Status.INVALID)
    result = credential_recheck_invalid(credential_id=invalid.pk, actor=request.user) if invalid else None
    if result is None:
        messages.error(request, "There is no key to check. Send a submission link instead.")
    elif result.verdict == "ok":
        messages.warning(
            request,
            f"Key {invalid.hint} passes the check now, but it was marked invalid and stays so (a key never "
            "goes back to active). Send a submission link so the customer hands it in again, or add it by hand.",
        )
    else:
        messages.warning(request, f"Key {invalid.hint} is still refused: {result.message}")
    return _back(institution)


# --------------------------------------------------------------------------
# Revoke (confirmation page with a reason)
# --------------------------------------------------------------------------


class ReasonForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        min_length=MIN_REASON_LENGTH,
        max_length=500,
        help_text="Kept in the audit log. Say why, e.g. “customer deleted the key”, “ticket 4711”.",
    )


def revoke_key_view(request: HttpRequest, model_admin, object_id) -> HttpResponse:
    institution = _institution(request, model_admin, object_id)
    _require(request, REVOKE_PERMISSION)
    credential = _current_key(institution, CD2Credential.Status.ACTIVE, CD2Credential.Status.PENDING_VERIFICATION)
    if credential is None:
        messages.error(request, "There is no active or pending key to revoke.")
        return _back(institution)
    form = ReasonForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            credential_revoke(
                credential=credential,
                actor=request.user,
                reason=form.cleaned_data["reason"],
                ip_address=client_ip(request),
            )
        except StaffActionRefused as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"Key {credential.hint} is revoked. The pipeline can no longer get it.")
        return _back(institution)
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": Institution._meta,
        "title": f"Revoke key {credential.hint}?",
        "institution": institution,
        "credential": credential,
        "form": form,
    }
    return TemplateResponse(request, "admin/credentials/revoke_key.html", context)


# --------------------------------------------------------------------------
# Add a key by hand
# --------------------------------------------------------------------------


class StaffKeyForm(forms.Form):
    # Password inputs never render their value back, so neither the Client ID
    # nor the Secret reaches the page again when the form has an error.
    client_id = forms.CharField(
        label="Client ID",
        strip=True,
        widget=forms.PasswordInput(attrs={"autocomplete": "off", "spellcheck": "false", "size": 60}),
        help_text="For example us-east-1#0a1b2c3d-…, exactly as the customer shared it.",
    )
    secret = forms.CharField(
        label="Secret",
        strip=True,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password", "spellcheck": "false", "size": 60}),
    )
    expires_on = forms.DateField(
        label="Expires on",
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
        help_text="The expiry date the customer chose at identity.instructure.com.",
    )
    confirm_short_expiry = forms.BooleanField(
        label="The customer chose an expiry under 6 months on purpose",
        required=False,
        help_text="Needed for a key that expires within 6 months; the key then shows “short expiry”.",
    )


@require_POST
def add_submitter_contact_view(request: HttpRequest, model_admin, object_id) -> HttpResponse:
    """One click: the person who handed over a key becomes a contact (twice clicked, still one contact)."""
    institution = _institution(request, model_admin, object_id)
    _require(request, ADD_CONTACT_PERMISSION)
    credential = object_or_404(
        CD2Credential.objects.without_secrets().filter(institution=institution), request.POST.get("credential", "")
    )
    try:
        contact, created = submitter_contact_add(
            credential=credential, actor=request.user, ip_address=client_ip(request)
        )
    except StaffActionRefused as exc:
        messages.error(request, str(exc))
    else:
        if created:
            messages.success(request, f"{contact.email} is now a contact and receives reminders and links.")
        else:
            messages.info(request, f"{contact.email} was already a contact; nothing changed.")
    return _back(institution)


@sensitive_post_parameters("client_id", "secret")
def add_key_view(request: HttpRequest, model_admin, object_id) -> HttpResponse:
    institution = _institution(request, model_admin, object_id)
    _require(request, ADD_KEY_PERMISSION)
    form = StaffKeyForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        outcome = credential_submit(
            door=Door.staff(institution=institution, user=request.user, ip_address=client_ip(request)),
            client_id=form.cleaned_data["client_id"],
            secret=form.cleaned_data["secret"],
            expires_on=form.cleaned_data["expires_on"],
            short_expiry_confirmed=form.cleaned_data["confirm_short_expiry"],
        )
        credential = outcome.credential
        if outcome.stored:
            if credential.status == CD2Credential.Status.ACTIVE:
                messages.success(request, f"Key {credential.hint} passed the CD2 check and is now the active key.")
            else:
                reason = outcome.check.message if outcome.check else "the CD2 gateway could not be reached"
                messages.warning(
                    request,
                    f"Key {credential.hint} is saved but not yet checked ({reason}). It is re-checked "
                    f"automatically and becomes active when CD2 accepts it.",
                )
            return _back(institution)
        for field, errors in outcome.errors.items():
            form.add_error(field if field in form.fields else None, errors)
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": Institution._meta,
        "title": f"Add a CD2 key for {institution.name}",
        "institution": institution,
        "form": form,
        "today": institution_today(institution, timezone.now()),
    }
    response = TemplateResponse(request, "admin/credentials/add_key.html", context)
    add_never_cache_headers(response)
    return response


# --------------------------------------------------------------------------
# Reveal
# --------------------------------------------------------------------------


class RevealForm(ReasonForm):
    password = forms.CharField(
        label="Your password",
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
        help_text="Asked again every five minutes before a Secret is shown.",
    )

    def __init__(self, *args, request: HttpRequest, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.request = request
        # Signed in with the identity provider: the fresh proof is a new
        # sign-in there (prompt=login, max_age=0), never a local password.
        self.by_provider = is_sso_session(request)
        fresh = reauth_is_fresh(request)
        self.needs_password = not fresh and not self.by_provider
        self.needs_provider = not fresh and self.by_provider
        if not self.needs_password:
            del self.fields["password"]

    def clean(self):
        cleaned = super().clean()
        if self.needs_provider:
            raise ValidationError("Sign in again with your identity provider first (the button above).")
        return cleaned

    def clean_password(self) -> str:
        password = self.cleaned_data.get("password", "")
        if not password:
            raise ValidationError("Enter your password to confirm it is you.")
        if not self.request.user.check_password(password):
            raise ValidationError("That is not your password.", code="wrong_password")
        return ""


@sensitive_post_parameters("password")
@sensitive_variables("revealed", "context", "response")
def reveal_view(request: HttpRequest, model_admin, object_id) -> HttpResponse:
    needed = (REVEAL_PERMISSION, "credentials.view_cd2credential")
    lacking = [perm for perm in needed if not request.user.has_perm(perm)]
    if lacking:
        raise missing_permission(*lacking, doing="Revealing a key's Secret")
    credential = object_or_404(CD2Credential.objects.without_secrets(), object_id)
    form = RevealForm(request.POST or None, request=request)
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": CD2Credential._meta,
        "credential": credential,
        "institution": credential.institution,
        "reauth_fresh": not (form.needs_password or form.needs_provider),
        "needs_provider": form.needs_provider,
        "by_provider": form.by_provider,
        "provider_reauth_url": reauth_url(request.get_full_path()),
        "provider_name": settings.OIDC_PROVIDER_NAME,
    }
    if request.method == "POST":
        if form.is_valid():
            if form.needs_password:
                reauth_mark(request)
            revealed = credential_reveal(
                credential_id=credential.pk,
                actor=request.user,
                reason=form.cleaned_data["reason"],
                ip_address=client_ip(request),
            )
            context.update({"title": f"Secret of key {credential.hint}", "revealed": revealed})
            response = TemplateResponse(request, "admin/credentials/reveal_shown.html", context)
            add_never_cache_headers(response)
            patch_cache_control(response, no_store=True, private=True)
            return response
        if form.has_error("password", "wrong_password"):
            signed_out = reauth_failed(request, where="reveal password check", credential=credential)
            if signed_out is not None:
                return signed_out
    context.update({"title": f"Reveal the Secret of key {credential.hint}", "form": form})
    response = TemplateResponse(request, "admin/credentials/reveal_form.html", context)
    add_never_cache_headers(response)
    return response
