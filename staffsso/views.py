"""The doors of SSO: start a sign-in or a re-authentication, the provider's callback, and our code step.

Thin: mozilla-django-oidc's request view builds the authorization request
(state, nonce and the PKCE challenge kept in the session); the callback is
ours, so that every refusal gets a page that says what to do and an audit
event, where the library's would answer a bare redirect or a 400.
"""

from __future__ import annotations

from urllib.parse import parse_qs, parse_qsl, urlsplit

import django_otp
from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_lockout_response as axes_lockout_response
from django import forms
from django.conf import settings
from django.contrib import auth
from django.contrib.admin import site as admin_site
from django.contrib.auth.signals import user_login_failed
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET
from mozilla_django_oidc.views import OIDCAuthenticationRequestView

from credentials.admin.devices import signed_in_with_recovery_code
from credentials.admin.pages import reauth_mark
from credentials.admin.site import CodeInput
from requestinfo import client_ip
from staffsso import services
from staffsso.backends import BACKEND_PATH, ExchangeFailed, StaffOIDCBackend, library_setting
from staffsso.config import sso_config, sso_enabled
from staffsso.discovery import ProviderUnavailable, provider_metadata
from staffsso.models import ProviderSession
from staffsso.services import Refusal, SsoRefused
from staffsso.session import PROVIDER_SESSION_KEY, REAUTH_KEY, is_sso_session, mfa_by_provider, reauth_started
from staffsso.tokens import TokenRefused

ADMIN_HOME = "/admin/"


def _page(request: HttpRequest, template: str, context: dict, *, status: int = 200) -> HttpResponse:
    context = {**admin_site.each_context(request), **context}
    response = TemplateResponse(request, template, context, status=status)
    add_never_cache_headers(response)
    return response


def _refused(request: HttpRequest, refusal: SsoRefused, *, status: int = 403) -> HttpResponse:
    services.sso_refusal_record(refusal=refusal, ip_address=client_ip(request))
    return _page(
        request,
        "staffsso/refused.html",
        {
            "title": "Sign-in refused",
            "message": refusal.message,
            "ask_for_access": refusal.reason == Refusal.NO_GROUP,
            "provider_name": sso_config().provider_name,
        },
        status=status,
    )


def _safe_next(request: HttpRequest, value: str | None) -> str:
    if value and url_has_allowed_host_and_scheme(value, allowed_hosts={request.get_host()}):
        return value
    return ADMIN_HOME


class SsoLoginView(OIDCAuthenticationRequestView):
    """Send the browser to the provider: code flow with PKCE, state and nonce (the library's request view)."""

    reauthenticate = False

    def __init__(self, *args, **kwargs) -> None:
        # The library reads its settings here; with SSO off there are none, and
        # dispatch answers 404 first.
        super(OIDCAuthenticationRequestView, self).__init__(*args, **kwargs)

    def get_settings(self, attr, *args):
        config = sso_config()
        return library_setting(config, provider_metadata(issuer=config.issuer, timeout=config.timeout), attr, *args)

    def get_extra_params(self, request):
        # Provider-specific extras (OIDC_AUTH_PARAMS); never our own state, nonce or PKCE.
        ours = {"state", "nonce", "code_challenge", "code_challenge_method", "client_id", "redirect_uri"}
        return {k: v for k, v in parse_qsl(settings.OIDC_AUTH_PARAMS) if k not in ours}

    def dispatch(self, request, *args, **kwargs):
        if not sso_enabled():
            raise Http404
        try:
            self.OIDC_OP_AUTH_ENDPOINT = self.get_settings("OIDC_OP_AUTHORIZATION_ENDPOINT")
        except ProviderUnavailable as exc:
            return _refused(request, SsoRefused(Refusal.PROVIDER_ERROR, detail=str(exc)), status=503)
        self.OIDC_RP_CLIENT_ID = self.get_settings("OIDC_RP_CLIENT_ID")
        return super().dispatch(request, *args, **kwargs)


class SsoReauthView(SsoLoginView):
    """A fresh sign-in at the provider for a sensitive act (reveal, authenticator reset): prompt=login, max_age=0.

    The callback accepts the answer only with an auth_time after this
    request and the same subject, then opens the usual five-minute window.
    """

    def get_extra_params(self, request):
        return {**super().get_extra_params(request), "prompt": "login", "max_age": "0"}

    def get(self, request):
        if not is_sso_session(request) or not request.user.is_authenticated:
            return HttpResponseRedirect(reverse("admin:login"))
        next_url = _safe_next(request, request.GET.get("next"))
        response = super().get(request)
        state = parse_qs(urlsplit(response["Location"]).query)["state"][0]
        reauth_started(request, state=state, next_url=next_url)
        return response


def _exchange(request: HttpRequest, *, reauth: dict | None):
    """The callback's code for checked ID token claims; SsoRefused for a bad state, answer or token."""
    config = sso_config()
    state = request.GET.get("state", "")
    states = request.session.get("oidc_states") or {}
    entry = states.pop(state, None) if state else None
    if entry is not None:
        # Used once: a replayed callback finds no state.
        request.session["oidc_states"] = states
    if entry is None:
        raise SsoRefused(Refusal.BAD_STATE, detail="state unknown, already used or from another browser")
    if request.GET.get("error"):
        raise SsoRefused(Refusal.PROVIDER_ERROR, detail=f"provider answered error={request.GET['error'][:60]}")
    # RFC 9207: a provider that names itself in the answer must be ours (mix-up attacks).
    if "iss" in request.GET and request.GET["iss"].rstrip("/") != config.issuer:
        raise SsoRefused(Refusal.PROVIDER_ERROR, detail="the answer names another issuer")
    code = request.GET.get("code")
    if not code:
        raise SsoRefused(Refusal.PROVIDER_ERROR, detail="no code in the answer")
    try:
        return StaffOIDCBackend().exchange_code(
            code=code,
            redirect_uri=request.build_absolute_uri(reverse("staffsso:callback")),
            code_verifier=entry.get("code_verifier") or "",
            nonce=entry.get("nonce") or "",
            auth_after=reauth["started"] if reauth else None,
        )
    except TokenRefused as exc:
        raise SsoRefused(Refusal.BAD_TOKEN, detail=str(exc)) from None
    except (ExchangeFailed, ProviderUnavailable) as exc:
        raise SsoRefused(Refusal.PROVIDER_ERROR, detail=str(exc)) from None


@require_GET
def callback(request: HttpRequest) -> HttpResponse:
    if not sso_enabled():
        raise Http404
    reauth = request.session.get(REAUTH_KEY)
    if not (isinstance(reauth, dict) and reauth.get("state") == request.GET.get("state")):
        reauth = None
    try:
        tokens = _exchange(request, reauth=reauth)
        if reauth is not None:
            return _reauthenticated(request, reauth=reauth, subject=tokens.claims["sub"])
        signed_in = services.sso_sign_in(claims=tokens.claims, ip_address=client_ip(request))
    except SsoRefused as refusal:
        return _refused(request, refusal)
    next_url = _safe_next(request, request.session.get("oidc_login_next"))
    # As authenticate() would: the sign-in's listeners (the audit) read which backend it was.
    signed_in.user.backend = BACKEND_PATH
    auth.login(request, signed_in.user, backend=BACKEND_PATH)
    provider_session = services.provider_session_start(
        signed_in=signed_in, refresh_token=tokens.refresh_token, access_token=tokens.access_token
    )
    request.session[PROVIDER_SESSION_KEY] = provider_session.pk
    if provider_session.mfa_by_provider:
        return HttpResponseRedirect(next_url)
    return HttpResponseRedirect(f"{reverse('staffsso:code')}?next={next_url}")


def _reauthenticated(request: HttpRequest, *, reauth: dict, subject: str) -> HttpResponse:
    session = ProviderSession.objects.select_related("identity").filter(pk=request.session.get(PROVIDER_SESSION_KEY))
    session = session.first()
    if not request.user.is_authenticated or session is None or session.identity.subject != subject:
        raise SsoRefused(Refusal.REAUTH_MISMATCH, detail="re-authenticated as another person", subject=subject)
    request.session.pop(REAUTH_KEY, None)
    reauth_mark(request)
    return HttpResponseRedirect(_safe_next(request, reauth.get("next")))


class CodeForm(forms.Form):
    otp_token = forms.CharField(
        label="One-time code",
        strip=True,
        widget=CodeInput(attrs={"autocomplete": "one-time-code", "autofocus": True}),
        help_text="The six digits your authenticator app shows, or one of your recovery codes.",
    )


@sensitive_post_parameters("otp_token")
def code_view(request: HttpRequest) -> HttpResponse:
    """Our one-time code after the provider's sign-in (OIDC_REQUIRE_MFA off)."""
    if not sso_enabled():
        raise Http404
    if not (request.user.is_authenticated and is_sso_session(request)):
        return HttpResponseRedirect(reverse("admin:login"))
    next_url = _safe_next(request, request.GET.get("next"))
    if request.user.is_verified() or mfa_by_provider(request):
        return HttpResponseRedirect(next_url)
    credentials = {"username": request.user.get_username()}
    if AxesProxyHandler.is_locked(request, credentials=credentials):
        # The lockout of the password form holds here too (django-axes' 429 page).
        request.axes_locked_out = True
        auth.logout(request)
        return axes_lockout_response(request, None, credentials)
    form = CodeForm(request.POST or None)
    failed = False
    if request.method == "POST" and form.is_valid():
        device = django_otp.match_token(request.user, form.cleaned_data["otp_token"])
        if device is not None:
            django_otp.login(request, device)
            return signed_in_with_recovery_code(request, device, next_url) or HttpResponseRedirect(next_url)
        failed = True
        # A failed sign-in like a wrong code at the password form: audited, counted toward the lockout.
        user_login_failed.send(
            sender=__name__,
            credentials=credentials,
            request=request,
            reason="wrong one-time code after signing in with the identity provider",
        )
    return _page(
        request,
        "staffsso/code.html",
        {"title": "One-time code", "form": form, "failed": failed, "next": next_url},
    )
