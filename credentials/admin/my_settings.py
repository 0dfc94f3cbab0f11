"""A staff member's own settings page ("My settings" beside "Reset my authenticator").

Their time zone, and which staff alerts reach them by mail (chat alerts go
to the channels in STAFF_ALERT_URLS, for everyone: services/alerts.py).
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from credentials.formatting import format_moment
from credentials.middleware import remember_time_zone
from credentials.models import StaffAlert
from credentials.selectors import staff_alert_events, staff_time_zone
from credentials.services.staff import staff_alert_events_set, staff_time_zone_set
from institutions.models import time_zone_names


def _zone_choices() -> list[tuple[str, str]]:
    return [("", f"The site's own ({settings.TIME_ZONE})"), *((z, z) for z in sorted(time_zone_names()))]


class MySettingsForm(forms.Form):
    time_zone = forms.ChoiceField(
        label="Time zone",
        required=False,
        help_text="Dates and times on the staff site are written in this zone. Customer mail uses the institution's.",
    )

    alert_events = forms.MultipleChoiceField(
        label="Alerts by mail",
        required=False,
        choices=StaffAlert.choices,
        widget=forms.CheckboxSelectMultiple,
        help_text="Mail me when this happens. Alerts that come together arrive as one mail.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["time_zone"].choices = _zone_choices()


def my_settings_view(request: HttpRequest, *, admin_site) -> HttpResponse:
    user = request.user
    stored = staff_time_zone(user=user)
    initial = {
        "time_zone": "" if stored == settings.TIME_ZONE else stored,
        "alert_events": staff_alert_events(user=user),
    }
    form = MySettingsForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            with transaction.atomic():
                staff_time_zone_set(user=user, time_zone=form.cleaned_data["time_zone"])
                staff_alert_events_set(user=user, events=form.cleaned_data["alert_events"])
        except ValidationError as exc:
            form.add_error("time_zone", exc.messages)
        else:
            remember_time_zone(request, staff_time_zone(user=user))
            messages.success(request, "Your settings are saved.")
            return HttpResponseRedirect(reverse(f"{admin_site.name}:my_settings"))
    context = {
        **admin_site.each_context(request),
        "title": "My settings",
        "form": form,
        "zone": timezone.get_current_timezone_name(),
        "now": format_moment(timezone.now()),
        "has_email": bool(user.email),
        "chat_alerts": bool(settings.STAFF_ALERT_URLS),
    }
    return TemplateResponse(request, "admin/credentials/my_settings.html", context)
