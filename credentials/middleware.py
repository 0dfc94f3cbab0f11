"""The staff member's own time zone on the staff site (StaffSettings.time_zone); the customer's language.

Every time the staff site writes (credentials/formatting.py, which reads the
current zone) is then in the reader's zone. Customer pages and mails name
the institution's zone explicitly, so they are not affected.
"""

from __future__ import annotations

import zoneinfo

from django.conf import settings
from django.middleware.locale import LocaleMiddleware
from django.urls import reverse
from django.utils import timezone, translation

from credentials.selectors import staff_time_zone

# The zone is read once per session (at sign-in), not once per page:
# my_settings_view writes it here too when it changes (the member's other
# sessions see it at their next sign-in).
SESSION_KEY = "staff_time_zone"


def remember_time_zone(request, zone: str) -> None:
    request.session[SESSION_KEY] = zone


def time_zone_on_login(sender, request, user, **kwargs) -> None:
    """user_logged_in receiver: the staff member's zone into the new session."""
    if request is not None and hasattr(request, "session") and user.is_staff:
        remember_time_zone(request, staff_time_zone(user=user))


class StaffTimeZoneMiddleware:
    """Activates a signed-in staff member's zone for their requests to the staff site."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if not (user and user.is_authenticated and user.is_staff and request.path.startswith(reverse("admin:index"))):
            return self.get_response(request)
        zone = request.session.get(SESSION_KEY)
        if zone is None:  # a session from before this setting existed
            zone = staff_time_zone(user=user)
            remember_time_zone(request, zone)
        try:
            timezone.activate(zoneinfo.ZoneInfo(zone))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            timezone.deactivate()
        try:
            return self.get_response(request)
        finally:
            timezone.deactivate()


# The staff's side of the site: always in English (LANGUAGE_CODE), whatever the browser asks.
STAFF_PATH_PREFIXES = ("/admin/", "/sso/", "/api/", "/healthz", "/metrics")


class CustomerLocaleMiddleware(LocaleMiddleware):
    """Django's LocaleMiddleware for the customer's pages only.

    A customer page follows the language cookie set by the switcher
    (django.views.i18n.set_language), else Accept-Language, among
    settings.LANGUAGES; the staff site stays in English, so a staff member
    whose browser prefers French still reads the admin as it is written.
    """

    def process_request(self, request):
        if request.path_info.startswith(STAFF_PATH_PREFIXES):
            translation.activate(settings.LANGUAGE_CODE)
            request.LANGUAGE_CODE = translation.get_language()
            return
        super().process_request(request)
