"""Project-wide protections that are not one feature's business.

- staff sign-in lockouts by username and IP together and, at a higher count,
  by IP alone (django-axes); the second factor itself is the staff admin
  site's (credentials/admin/site.py);
- sessions: 30 idle minutes (settings) and at most 12 hours from sign-in;
- a 400, not a crash, for requests no browser of ours sends;
- a clear 503 page instead of a 500 when the database is unreachable.

Wired by settings (middleware, backends) and `edpotential.apps.SecurityConfig.ready`.
"""

from __future__ import annotations

import codecs
import json
import logging
import sys
import time

from axes.attempts import get_cool_off_threshold
from axes.backends import AxesStandaloneBackend
from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_failure_limit
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib import auth
from django.db import InterfaceError, OperationalError
from django.db.models import Sum
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseForbidden
from django.template import loader
from django.urls import reverse
from django.views import defaults

from credentials.views import too_large
from requestinfo import declared_length
from safeadmin.permissions import refusal_for

logger = logging.getLogger(__name__)

# Session key holding the Unix time of sign-in, for the absolute cap.
SESSION_STARTED_KEY = "_edp_signed_in_at"


# ---------------------------------------------------------------------------
# Lockout
# ---------------------------------------------------------------------------


class WebLoginAxesBackend(AxesStandaloneBackend):
    """django-axes' lockout check, for sign-ins made through a web request.

    Axes refuses to run when `authenticate()` gets no request. Every web
    sign-in here (the admin login form) passes one; calls without one come
    from code with no client to lock out: the test client's `login()`, the
    shell, management commands.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


class AddressWideLockoutHandler(AxesDatabaseHandler):
    """django-axes' database handler with a second, higher limit for one address across usernames.

    Axes compares the largest count among its AXES_LOCKOUT_PARAMETERS groups
    with one AXES_FAILURE_LIMIT, so adding "ip_address" there would lock a
    whole office out after 5 failures; and its reset-on-success would let
    one good sign-in wipe every failure from that address. This handler
    keeps axes' (username, address) count and limit, and locks the address
    out as well once it has LOCKOUT_IP_FAILURE_LIMIT failures within the
    cool-off time, whichever usernames they were for.
    """

    def get_failures(self, request, credentials: dict | None = None) -> int:
        failures = super().get_failures(request, credentials)
        from_address = (
            AccessAttempt.objects.filter(
                ip_address=request.axes_ip_address, attempt_time__gte=get_cool_off_threshold(request)
            ).aggregate(total=Sum("failures_since_start"))["total"]
            or 0
        )
        if from_address >= settings.LOCKOUT_IP_FAILURE_LIMIT:
            # Reported as the pair limit reached: that is the number axes compares.
            return max(failures, get_failure_limit(request, credentials))
        return failures


# ---------------------------------------------------------------------------
# Session start
# ---------------------------------------------------------------------------


def session_mark_start(sender, request, user, **kwargs) -> None:
    """On sign-in, note the time in the session: SessionLifetimeMiddleware ends it 12 hours later."""
    if request is not None and hasattr(request, "session"):
        request.session[SESSION_STARTED_KEY] = int(time.time())


# ---------------------------------------------------------------------------
# Middleware
# ---------------------------------------------------------------------------


class SessionLifetimeMiddleware:
    """Ends a signed-in session 12 hours (SESSION_ABSOLUTE_SECONDS) after sign-in, however active.

    The 30-minute idle limit is Django's own (SESSION_COOKIE_AGE with
    SESSION_SAVE_EVERY_REQUEST). Sessions without a recorded start (made
    before this existed) start counting now.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            now = int(time.time())
            started = request.session.get(SESSION_STARTED_KEY)
            if started is None:
                request.session[SESSION_STARTED_KEY] = now
            elif now - int(started) > settings.SESSION_ABSOLUTE_SECONDS:
                auth.logout(request)
        return self.get_response(request)


class MalformedRequestMiddleware:
    """Answer 400 to requests no page of ours sends, before anything reads them.

    - a body or query declared in any charset but UTF-8 (our pages are UTF-8,
      so browsers submit UTF-8): Django would decode it with that charset,
      or refuse it with an exception later, from inside a view;
    - a NUL character in the query string: PostgreSQL refuses NUL in text,
      so a search or filter holding one would end in a 500.

    A process_view hook, so the 400 leaves through every middleware and
    carries the usual security headers; it must come before
    CsrfViewMiddleware, which reads the body in its own process_view.
    Logged as one line, without traceback or path (the path of a link page
    holds its token).
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        reason = _malformed(request)
        if reason is None:
            return None
        view = request.resolver_match.view_name if request.resolver_match else "?"
        logger.warning("Malformed request to %s refused (400): %s", view, reason)
        # Rendered without the request: Django's own 400 view checks CSRF,
        # which reads the very body we refuse.
        return HttpResponseBadRequest(loader.get_template("400.html").render({}))


def _malformed(request: HttpRequest) -> str | None:
    """Why `request` is refused, or None when it is fine."""
    charset = request.content_params.get("charset") if request.content_params else None
    if charset is not None:
        if not _is_utf8(charset):
            return "a charset other than UTF-8"
        # "utf8", "UTF8": Django itself accepts a form only as "utf-8".
        request.encoding = "utf-8"
    query = request.META.get("QUERY_STRING", "")
    if "\x00" in query or "%00" in query:
        return "a NUL character in the query string"
    return None


def _is_utf8(charset: str) -> bool:
    try:
        return codecs.lookup(charset).name == "utf-8"
    except LookupError:
        return False


class BodySizeLimitMiddleware:
    """Answer 413 to a body over DATA_UPLOAD_MAX_MEMORY_SIZE before anything reads it.

    Without it, CsrfViewMiddleware reads request.POST for its token and
    Django raises RequestDataTooBig: a bare 400 and a warning, instead of the
    page bodies just over a view's own limit get (the public views answer
    413 above 16 KB, credentials.views.limit_body; both answer with
    credentials.views.too_large). It checks in __call__,
    which runs before any middleware's process_view (where the CSRF check
    reads the body), so it can sit after CSPMiddleware and the 413 page
    still carries the security headers. The body is never read: Django's
    WSGI stream is bounded by Content-Length and left unconsumed.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if request.content_type == "multipart/form-data" and request.path.startswith(reverse("admin:index")):
            # A file upload in the staff admin (the bulk import): Django keeps
            # file parts out of DATA_UPLOAD_MAX_MEMORY_SIZE, so the whole body
            # gets its own cap. Public pages take no files: their cap stays.
            limit = settings.UPLOAD_MAX_BODY_SIZE
        length = declared_length(request)
        if limit is not None and (length is None or length > limit):
            return too_large(request)
        return self.get_response(request)


# Errors that mean the database cannot be reached (or the connection died), not a bug.
DATABASE_DOWN = (OperationalError, InterfaceError)
# What a 503 asks the client to wait before trying again, in seconds.
RETRY_AFTER_SECONDS = 60


def database_unavailable_response(request: HttpRequest) -> HttpResponse:
    """The 503 for a request the database could not serve: the page, or a problem document under /api/.

    Rendered without the request: context processors could touch the database.
    """
    if request.path.startswith("/api/"):
        body = {
            "type": "urn:cd2-registry:problem:service_unavailable",
            "title": "Service Unavailable",
            "status": 503,
            "detail": "The registry's database cannot be reached. Nothing was changed; try again shortly.",
            "code": "service_unavailable",
        }
        response = HttpResponse(json.dumps(body), status=503, content_type="application/problem+json")
    else:
        response = HttpResponse(loader.get_template("503.html").render({}), status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


class DatabaseUnavailableMiddleware:
    """A clear 503 page, not a 500, when the database cannot be reached while a view runs.

    Every write is one transaction, so nothing half-written is left behind;
    the page tells the visitor their data was not saved and to try again.
    The error is still logged (and mailed to ADMINS) so operations hear of it.
    A database error raised outside a view (a middleware loading the
    session) reaches `server_error` instead, which answers the same.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, DATABASE_DOWN):
            return None
        logger.error("Database unavailable while serving %s %s", request.method, request.path, exc_info=exception)
        return database_unavailable_response(request)


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: the 503 for a database that went away anywhere in the request, else Django's own 500.

    Django calls it for an exception no view caught, wherever it was raised:
    in a middleware (the session middleware reading a session when the
    database restarted) as much as in a view. Django has logged the error
    (and mailed ADMINS) by then.
    """
    if isinstance(sys.exc_info()[1], DATABASE_DOWN):
        return database_unavailable_response(request)
    return defaults.server_error(request)


def permission_denied(request: HttpRequest, exception: BaseException | None = None) -> HttpResponse:
    """handler403: the refusal in words (safeadmin.permissions): which permission is missing, who has it."""
    user = getattr(request, "user", None)
    signed_in = bool(user is not None and user.is_authenticated)
    context = {
        "reason": refusal_for(request, exception),
        "signed_in_as": user.get_username() if signed_in else "",
        "groups": sorted(user.groups.values_list("name", flat=True)) if signed_in else [],
        "back": reverse("admin:index") if request.path_info.startswith("/admin/") else "/",
    }
    return HttpResponseForbidden(loader.render_to_string("403.html", context, request))
