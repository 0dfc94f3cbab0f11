"""Forms of the public pages. They collect and shape input; the key itself is
validated by credentials.validators inside the services, the one path every
door shares, and the services' errors are attached back to these fields.
"""

from __future__ import annotations

import calendar
import datetime as dt

from django import forms
from django.core.exceptions import ValidationError
from django.utils.translation import gettext, pgettext_lazy
from django.utils.translation import gettext_lazy as _

from credentials import validators

# The periods identity.instructure.com offers in its Expiry drop-down (some
# tenants stop at 1 year). Value: (years, months, days) added to the day the
# key was made.
EXPIRY_PERIODS: dict[str, tuple[str, tuple[int, int, int]]] = {
    "1d": (pgettext_lazy("expiry period", "1 day"), (0, 0, 1)),
    "1w": (pgettext_lazy("expiry period", "1 week"), (0, 0, 7)),
    "1m": (pgettext_lazy("expiry period", "1 month"), (0, 1, 0)),
    "6m": (pgettext_lazy("expiry period", "6 months"), (0, 6, 0)),
    "1y": (pgettext_lazy("expiry period", "1 year"), (1, 0, 0)),
    "2y": (pgettext_lazy("expiry period", "2 years"), (2, 0, 0)),
    "3y": (pgettext_lazy("expiry period", "3 years"), (3, 0, 0)),
}
DATE_INPUT_FORMATS = ["%Y-%m-%d", "%d %b %Y", "%d %B %Y", "%b %d %Y", "%B %d %Y", "%b %d, %Y", "%B %d, %Y"]


def add_period(start: dt.date, years: int = 0, months: int = 0, days: int = 0) -> dt.date:
    """start plus a calendar period; 31 Jan + 1 month is the last day of February."""
    month_index = start.month - 1 + months + 12 * years
    year, month = start.year + month_index // 12, month_index % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return dt.date(year, month, day) + dt.timedelta(days=days)


def period_end(code: str, *, start: dt.date) -> dt.date:
    return add_period(start, *EXPIRY_PERIODS[code][1])


class SubmissionForm(forms.Form):
    client_id = forms.CharField(
        label=_("Client ID"),
        max_length=300,
        required=False,  # the validators give the helpful "required" message
        help_text=_("Looks like us-east-1#0a1b2c3d-…: copy all of it, including the part before the #."),
        widget=forms.TextInput(
            attrs={"autocomplete": "off", "spellcheck": "false", "autocapitalize": "none", "autocorrect": "off"}
        ),
    )
    secret = forms.CharField(
        label=_("Secret"),
        max_length=2000,
        required=False,
        strip=False,
        help_text=_("Shown once, next to the Client ID. For your safety we never show it back to you."),
        widget=forms.PasswordInput(
            render_value=False,
            attrs={"autocomplete": "off", "spellcheck": "false", "autocapitalize": "none", "autocorrect": "off"},
        ),
    )
    expiry_period = forms.ChoiceField(
        label=_("Expiry you chose"),
        required=False,
        choices=[("", _("Choose…"))] + [(code, label) for code, (label, _) in EXPIRY_PERIODS.items()],
        help_text=_("If you made the key today, choose the expiry you picked and we fill in the date."),
    )
    expires_on = forms.DateField(
        label=_("Expiry date"),
        required=False,
        input_formats=DATE_INPUT_FORMATS,
        help_text=_("The expiry date shown for the key at identity.instructure.com."),
        error_messages={"invalid": _("Enter the expiry date as year-month-day, for example 2027-11-26.")},
        widget=forms.DateInput(format="%Y-%m-%d", attrs={"type": "date"}),
    )
    confirm_short_expiry = forms.BooleanField(
        label="",  # in __init__: a number in a translated label is filled in when the page is drawn
        required=False,
    )
    submitted_by = forms.CharField(
        label=_("Your name"),
        max_length=200,
        error_messages={"required": _("Enter your name, so we know who to thank and who to ask.")},
        widget=forms.TextInput(attrs={"autocomplete": "name"}),
    )
    submitted_by_email = forms.EmailField(
        label=_("Your work email"),
        max_length=254,
        help_text=_("We send the receipt here, and write here if anything is wrong with the key."),
        error_messages={
            "required": _("Enter your work email: the receipt goes there."),
            "invalid": _("Enter an email address, for example ada@school.edu."),
        },
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
    )

    def __init__(self, *args, today: dt.date, **kwargs) -> None:
        self.today = today
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        self.fields["confirm_short_expiry"].label = gettext("I chose an expiry under %(months)d months on purpose") % {
            "months": validators.SHORT_EXPIRY_MONTHS
        }

    # The shared validators run here too, so every mistake shows at once next
    # to its field; the service runs them again as the one path to storage.
    def clean_client_id(self) -> str:
        return validators.clean_client_id(self.cleaned_data.get("client_id"))

    def clean_secret(self) -> str:
        return validators.clean_secret(self.cleaned_data.get("secret"))

    def clean(self) -> dict:
        data = super().clean()
        if "expires_on" in self.errors:
            return data
        # A date typed (or filled in by the page) wins: it is what Instructure shows.
        if not data.get("expires_on") and data.get("expiry_period"):
            data["expires_on"] = period_end(data["expiry_period"], start=self.today)
        try:
            data["expires_on"] = validators.clean_expires_on(data.get("expires_on"), today=self.today)
        except ValidationError as exc:
            self.add_error("expires_on", exc)
            return data
        if validators.is_short_expiry(data["expires_on"], today=self.today) and not data.get("confirm_short_expiry"):
            self.add_error(
                "confirm_short_expiry",
                validators.SHORT_EXPIRY_MESSAGE.format(months=validators.SHORT_EXPIRY_MONTHS),
            )
        return data

    def key_input(self) -> dict:
        """What the service takes, after is_valid()."""
        return {
            "client_id": self.cleaned_data.get("client_id", ""),
            "secret": self.cleaned_data.get("secret", ""),
            "expires_on": self.cleaned_data.get("expires_on"),
            "short_expiry_confirmed": bool(self.cleaned_data.get("confirm_short_expiry")),
            "submitted_by": self.cleaned_data.get("submitted_by", ""),
            "submitted_by_email": self.cleaned_data.get("submitted_by_email", ""),
        }

    @property
    def has_field_errors(self) -> bool:
        return any(name != "__all__" for name in self.errors)

    def prepare_to_show_again(self) -> None:
        """Before a bound form is shown again: the Secret is never in it, so say so at its field.

        A Client ID that failed validation is not shown back either: it may be
        the Secret pasted into the wrong field.
        """
        if not (self.is_bound and self.errors):
            return
        if "client_id" in self.errors and self.data.get("client_id", "").strip():
            data = self.data.copy()
            data["client_id"] = ""
            self.data = data
            self.add_error(
                "client_id",
                gettext(
                    "We cleared what you entered here: it is not a Client ID, and it may be the Secret pasted into "
                    "the wrong box, which we never show back. Paste the Client ID again."
                ),
            )
        if "secret" not in self.errors:
            self.add_error("secret", gettext("Paste the Secret again: for your safety it is never shown back to you."))

    def add_service_errors(self, errors: dict[str, list[str]]) -> None:
        for name, messages in errors.items():
            for message in messages:
                self.add_error(None if name == "__all__" else name, message)


class LinkRequestForm(forms.Form):
    email = forms.EmailField(
        label=_("Your work email"),
        max_length=254,
        error_messages={
            "required": _("Enter the work email address we have for you."),
            "invalid": _("Enter an email address, for example ada@school.edu."),
        },
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
    )

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
