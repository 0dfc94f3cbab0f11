"""The public pages: the submission link page and "lost the link?".

Thin doors into credentials.submission. Every link page is private to one
customer: never cached, never sent as a Referer (the token is in its URL),
not indexed, and rate limited per link and per IP in the shared cache.
"""

from __future__ import annotations

import functools
import hashlib
import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_http_methods
from django_ratelimit.decorators import ratelimit

from credentials.days import institution_today
from credentials.formatting import recommended_expiry
from credentials.forms import EXPIRY_PERIODS, LinkRequestForm, SubmissionForm, period_end
from credentials.models import CD2Credential, hash_token
from credentials.services.health import health_check, health_status
from credentials.services.links import link_request_record, submission_link_get, submission_link_replaced
from credentials.services.metrics import metrics_render
from credentials.services.submission import Door, Result, credential_submit, receipt_context
from credentials.validators import SHORT_EXPIRY_MONTHS, add_months
from institutions.models import email_key
from requestinfo import client_ip, declared_length

# A customer retyping a Client ID a few times stays far below these; a script
# trying keys or addresses does not.
SUBMIT_RATE_PER_LINK = "10/h"
SUBMIT_RATE_PER_IP = "30/h"
PAGE_RATE_PER_IP = "300/h"
LINK_REQUEST_RATE_PER_IP = "10/h"
LINK_REQUEST_RATE_PER_EMAIL = "3/h"
# The forms are a few short fields; anything bigger is not a customer.
MAX_BODY_BYTES = 16 * 1024
FORM_REFERRER_POLICY = "strict-origin"  # see private_page
# Where the confirmation page finds the key just stored (the link is used up by then).
SESSION_KEY = "credentials_submitted_id"


def private_page(view=None, *, referrer_policy: str = "no-referrer"):
    """Cache-Control: no-store, a Referrer-Policy and noindex on a link page.

    Pages with a form use "strict-origin" instead of "no-referrer": under
    no-referrer browsers send `Origin: null` with the form's POST, which
    Django's CSRF check rightly refuses (and on HTTPS there would be no
    Referer to fall back on). strict-origin still never sends the path, so
    the token in the URL reaches no Referer header, ours included.
    """

    def decorate(view):
        @functools.wraps(view)
        def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            response = view(request, *args, **kwargs)
            add_never_cache_headers(response)
            response["Referrer-Policy"] = referrer_policy
            response["X-Robots-Tag"] = "noindex, nofollow"
            return response

        return wrapped

    return decorate(view) if view is not None else decorate


def too_large(request: HttpRequest) -> HttpResponse:
    """The one 413 page for a body over a limit, whichever guard caught it (limit_body or the middleware)."""
    return render(request, "credentials/too_large.html", status=413)


def limit_body(view):
    """Answer 413 to a body larger than MAX_BODY_BYTES before anything reads it.

    Bodies over DATA_UPLOAD_MAX_MEMORY_SIZE never get here: the middleware
    edpotential.security.BodySizeLimitMiddleware answers them with the same page.
    """

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        length = declared_length(request)
        if length is None or length > MAX_BODY_BYTES:
            return too_large(request)
        return view(request, *args, **kwargs)

    return wrapped


def _link_key(group: str, request: HttpRequest) -> str:
    # The token's hash, as stored: the raw token never becomes a cache key.
    return hash_token(request.resolver_match.kwargs.get("token", ""))


def _email_key(group: str, request: HttpRequest) -> str:
    # The same key the lookup compares (email_key): every spelling that could
    # reach one contact counts against one limit.
    return hashlib.sha256(email_key(request.POST.get("email", "")).encode()).hexdigest()


def _client_ip(request: HttpRequest) -> str | None:
    # The same reading of X-Forwarded-For as the staff sign-in lockout.
    return client_ip(request)


def _ip_key(group: str, request: HttpRequest) -> str:
    return _client_ip(request) or "unknown"


def _per_link_rate(group: str, request: HttpRequest) -> str | None:
    # Not counted (no cache key made) once the per-IP limit refuses the
    # request: an address guessing tokens cannot fill the cache with them.
    return None if getattr(request, "limited", False) else SUBMIT_RATE_PER_LINK


def _unusable(request: HttpRequest, token: str = "") -> HttpResponse:
    # One page, one status for unknown, expired, revoked and used links alike. A link a newer one
    # replaced says so (when, and to whom, masked): only the holder of its token reads that.
    replaced = submission_link_replaced(token=token) if token else None
    context = {"replaced": replaced, "form": LinkRequestForm() if replaced else None}
    return render(request, "credentials/link_unusable.html", context, status=404)


def _rate_limited(request: HttpRequest) -> HttpResponse:
    response = render(request, "credentials/rate_limited.html", status=429)
    response["Retry-After"] = "3600"
    return response


def _submit_context(link, form: SubmissionForm, *, error_cause: str = "") -> dict:
    today = form.today
    return {
        "error_cause": error_cause,
        "short_expiry_before": add_months(today, SHORT_EXPIRY_MONTHS),
        "short_expiry_months": SHORT_EXPIRY_MONTHS,
        "form": form,
        "institution": link.institution,
        "link": link,
        "today": today,
        "key_name": settings.CD2_KEY_NAME,
        "recommended_expiry": recommended_expiry(),
        # For the page's script: the period picker fills the date from these.
        "period_dates": {code: period_end(code, start=today).isoformat() for code in EXPIRY_PERIODS},
    }


@sensitive_post_parameters("secret", "client_id")
@require_http_methods(["GET", "HEAD", "POST"])
@private_page(referrer_policy=FORM_REFERRER_POLICY)
@limit_body
@ratelimit(group="credentials.submit.page", key=_ip_key, rate=PAGE_RATE_PER_IP, method=["GET", "HEAD"], block=False)
@ratelimit(group="credentials.submit.ip", key=_ip_key, rate=SUBMIT_RATE_PER_IP, method="POST", block=False)
@ratelimit(group="credentials.submit.link", key=_link_key, rate=_per_link_rate, method="POST", block=False)
def submit(request: HttpRequest, token: str) -> HttpResponse:
    """The page behind a submission link. Opening it (GET) never uses the link up."""
    # Limits first: unknown tokens count toward them and get the same 429.
    if getattr(request, "limited", False):
        return _rate_limited(request)
    link = submission_link_get(token=token)
    if link is None:
        return _unusable(request, token)
    # The customer's day: the institution's (an expiry "in the past" is past there).
    today = institution_today(link.institution, timezone.now())
    if request.method != "POST":
        return render(request, "credentials/submit.html", _submit_context(link, SubmissionForm(today=today)))

    form = SubmissionForm(request.POST, today=today)
    error_cause = ""
    if form.is_valid():
        key_input = form.key_input()
        door = Door.customer(
            link=link,
            submitted_by=key_input.pop("submitted_by"),
            submitted_by_email=key_input.pop("submitted_by_email"),
            ip_address=_client_ip(request),
        )
        outcome = credential_submit(door=door, today=today, **key_input)
        if outcome.result is Result.LINK_UNUSABLE:
            return _unusable(request, token)
        if outcome.stored:
            request.session[SESSION_KEY] = outcome.credential.pk
            return redirect("credentials:received")
        form.add_service_errors(outcome.errors)
        error_cause = outcome.cause
    form.prepare_to_show_again()
    return render(request, "credentials/submit.html", _submit_context(link, form, error_cause=error_cause))


@require_http_methods(["GET", "HEAD"])
@private_page
def received(request: HttpRequest) -> HttpResponse:
    """The confirmation after a key was stored (the key stays out: hint and dates only)."""
    credential_id = request.session.get(SESSION_KEY)
    credential = (
        CD2Credential.objects.without_secrets()
        .select_related("institution", "institution__account_owner")
        .filter(pk=credential_id)
        .first()
        if credential_id
        else None
    )
    if credential is None:
        return _unusable(request)
    return render(request, "credentials/received.html", receipt_context(credential))


@require_http_methods(["GET", "HEAD", "POST"])
@private_page(referrer_policy=FORM_REFERRER_POLICY)
@limit_body
@ratelimit(group="credentials.link_request.ip", key=_ip_key, rate=LINK_REQUEST_RATE_PER_IP, method="POST", block=False)
@ratelimit(
    group="credentials.link_request.email", key=_email_key, rate=LINK_REQUEST_RATE_PER_EMAIL, method="POST", block=False
)
def request_link(request: HttpRequest) -> HttpResponse:
    """ "Lost the link?": the same answer whether or not the address is known.

    The request is stored (a notice) before the page says "sent", the same
    row for every address; the lookup and the mail happen on a worker, so
    the answer does not even take longer for a known address. With the
    database down the page answers 503 instead (nothing stored, try again).
    """
    if request.method == "POST":
        if getattr(request, "limited", False):
            return _rate_limited(request)
        form = LinkRequestForm(request.POST)
        if form.is_valid():
            link_request_record(email=form.cleaned_data["email"], ip_address=_client_ip(request))
            return redirect("credentials:request_link_sent")
    else:
        form = LinkRequestForm()
    return render(request, "credentials/request_link.html", {"form": form})


@require_http_methods(["GET", "HEAD"])
@private_page
def request_link_sent(request: HttpRequest) -> HttpResponse:
    return render(request, "credentials/request_link_sent.html")


@never_cache
@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """For monitors, no sign-in: ok/failing per component (database, broker, cache, each scheduled job).

    200 for "ok" and "degraded" (only the cache fails: every page serves),
    503 for "failing". Nothing else is shown: no counts, names of
    institutions or errors.
    """
    components = health_check()
    status = health_status(components)
    return JsonResponse({"status": status, "components": components}, status=503 if status == "failing" else 200)


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus' scrape (text format), for a bearer of METRICS_TOKEN only; 404 when no token is configured.

    The token is compared in constant time. Numbers only: no label names an
    institution, a person, a key or a token (credentials.services.metrics).
    """
    token = settings.METRICS_TOKEN
    if not token:
        return HttpResponse("Not found.\n", status=404, content_type="text/plain")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        response = HttpResponse("A bearer token is required (METRICS_TOKEN).\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body, content_type = metrics_render()
    return HttpResponse(body, content_type=content_type)
