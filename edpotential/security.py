"""Project-wide protections that are not one feature's business.

- the client's address, read the same way everywhere (lockouts, rate limits, audit);
- staff sign-in lockouts by username and IP together (django-axes); the
  second factor itself is the staff admin site's (credentials/admin/site.py);
- sessions: 30 idle minutes (settings) and at most 12 hours from sign-in;
- a clear 503 page instead of a 500 when the database is unreachable.

Wired by settings (middleware, backends) and `edpotential.apps.SecurityConfig.ready`.
"""

from __future__ import annotations

import logging
import time

from axes.backends import AxesStandaloneBackend
from django.conf import settings
from django.contrib import auth
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.template import loader

logger = logging.getLogger(__name__)

# Session key holding the Unix time of sign-in, for the absolute cap.
SESSION_STARTED_KEY = "_edp_signed_in_at"


# ---------------------------------------------------------------------------
# Client address
# ---------------------------------------------------------------------------


def client_ip(request: HttpRequest | None) -> str | None:
    """The client's IP address, trusting X-Forwarded-For only behind our own proxy.

    Behind the trusted proxy (BEHIND_TRUSTED_PROXY) the proxy appends the
    address it saw as the last X-Forwarded-For entry; anything before it was
    written by the client and could be forged. Without a proxy the header is
    ignored, so nobody escapes a lockout by inventing addresses.
    """
    if request is None:
        return None
    if getattr(settings, "BEHIND_TRUSTED_PROXY", False):
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        last = forwarded.split(",")[-1].strip()
        if last:
            return last
    return request.META.get("REMOTE_ADDR") or None


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


def too_large(request: HttpRequest) -> HttpResponse:
    """The one 413 page for a body over a limit, whichever guard caught it."""
    return render(request, "credentials/too_large.html", status=413)


def declared_length(request: HttpRequest) -> int | None:
    """The request's Content-Length, or None when it is missing or not a number."""
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None


class BodySizeLimitMiddleware:
    """Answer 413 to a body over DATA_UPLOAD_MAX_MEMORY_SIZE before anything reads it.

    Without it, CsrfViewMiddleware reads request.POST for its token and
    Django raises RequestDataTooBig: a bare 400 and a warning, instead of the
    page bodies just over a view's own limit get (the public views answer
    413 above 16 KB, credentials.views.limit_body). It checks in __call__,
    which runs before any middleware's process_view (where the CSRF check
    reads the body), so it can sit after CSPMiddleware and the 413 page
    still carries the security headers. The body is never read: Django's
    WSGI stream is bounded by Content-Length and left unconsumed.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        length = declared_length(request)
        if limit is not None and (length is None or length > limit):
            return too_large(request)
        return self.get_response(request)


class DatabaseUnavailableMiddleware:
    """A clear 503 page, not a 500, when the database cannot be reached.

    Every write is one transaction, so nothing half-written is left behind;
    the page tells the visitor their data was not saved and to try again.
    The error is still logged (and mailed to ADMINS) so operations hear of it.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, (OperationalError, InterfaceError)):
            return None
        logger.error("Database unavailable while serving %s %s", request.method, request.path, exc_info=exception)
        # Rendered without the request: context processors could touch the database.
        body = loader.get_template("503.html").render({})
        response = HttpResponse(body, status=503)
        response["Retry-After"] = "60"
        return response
