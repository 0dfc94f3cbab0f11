"""The second net under "a secret never reaches a log or an error mail".

The first net is the code itself: services, tasks and views never log a
Secret or a full Client ID. This module masks what slips through anyway:

- `SecretMaskingFilter` (attached to every handler in settings.LOGGING)
  rewrites each record's message, arguments, traceback and stack text.
- `MaskingAdminEmailHandler` masks the subject and both bodies of Django's
  error mail, whose traceback and request report are built outside the record.
- `SecretSafeExceptionReporterFilter` (DEFAULT_EXCEPTION_REPORTER_FILTER)
  hides the form fields that carry a key or a password in every error report,
  whether or not a view remembered `@sensitive_post_parameters`, and the
  password of every URL among the settings and request.META it shows.

A CD2 Secret is opaque (docs/CD2.md), so "looks like a secret" is a
heuristic: a long run of token characters mixing upper case, lower case and
digits; the password of a URL (redis://:password@host); any value written
after a name such as secret, client-secret, SECRET_KEY, password or token,
with "=", ":" or "=>"; and, after such a name and a space, any word but a
plain lower-case one ("secret Xy-12" is masked, "the secret was" is not).
A submission link's path, /k/<token>/, is masked by its shape instead, since
about one token in 1,500 has no digit and would pass the heuristic. Every
URL loses its query string, fragment and user name or password (a webhook
receiver's `?token=…`, `https://token@host`), whatever they look like.

`mask_secrets` is also what the outbox writes into a notice's error and the
audit log into an event's reason and details (credentials/services/notices.py,
audit.py), since every staff role reads those.

gunicorn's access and error logs pass through the same filter
(edpotential/gunicorn_logging.py, selected by gunicorn.conf.py).
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable

from django.utils.log import AdminEmailHandler
from django.views.debug import SafeExceptionReporterFilter

MASK = "[masked]"

# Form fields and variable names whose values are never shown in error reports.
SENSITIVE_NAMES = re.compile(r"secret|client_id|password|passwd|token|otp|key|auth|cookie|signature|session", re.I)

# The password in a URL: redis://:password@host, postgres://user:password@host.
_URL_PASSWORD = re.compile(r"\b(?P<start>[a-z][a-z0-9+.-]*://[^\s:/?#@]*:)[^\s/?#@]+@", re.I)
# A name that says its value is secret, with whatever prefix or suffix:
# secret, client-secret, DAP_CLIENT_SECRET, SECRET_KEY, x-api-key, access_token.
_SENSITIVE_NAME = r"[\w-]*(?:secret|password|passwd|token|api[_-]?key|authorization)[\w-]*"
# A value: up to the next space, quote or delimiter; never our own mask again.
_VALUE = r"""(?!\[masked\])[^\s'",;&)}\]]+"""
# After "name value" (no = or :), a plain lower-case word is prose, not a value.
_PROSE_WORD = re.compile(r"[a-z]+[.,:;!?]?")


# An absolute URL: its query string and fragment (a receiver's ?token=…) and
# its user name or password are masked; scheme, host, port and path stay.
_ABSOLUTE_URL = re.compile(r"""\b(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<rest>[^\s'"<>`]+)""", re.I)
# A path with a query string after "url:", as urllib3 words a failed request
# ("Max retries exceeded with url: /hook?token=…").
_URL_PATH_QUERY = re.compile(r"""(?P<start>\burl:\s*/[^\s?#'"]*)[?#][^\s'"]*""", re.I)


def _mask_url(match: re.Match[str]) -> str:
    rest = match.group("rest")
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        userinfo, host = authority.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        # user:password keeps the user (postgres://registry:…@db); a lone name may be a token itself.
        authority = f"{user}:{MASK}@{host}" if has_password else f"{MASK}@{host}"
    cut = min((i for i in (tail.find("?"), tail.find("#")) if i >= 0), default=-1)
    if cut >= 0:
        tail = tail[:cut] + "?" + MASK
    return match.group("scheme") + authority + tail


def mask_urls(text: str) -> str:
    """`text` with every URL's query string, fragment and user name or password replaced by [masked]."""
    text = _ABSOLUTE_URL.sub(_mask_url, text)
    return _URL_PATH_QUERY.sub(r"\g<start>?" + MASK, text)


def _mask_value_after_space(match: re.Match[str]) -> str:
    if _PROSE_WORD.fullmatch(match.group("value")):
        return match.group(0)
    return match.group("key") + MASK


_PATTERNS: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    (_URL_PASSWORD, r"\g<start>" + MASK + "@"),
    # A submission link (/k/<token>/, credentials/urls.py), in a request line,
    # a full URL or a Referer; /k/received/ is a page, not a token.
    (re.compile(r"/k/(?!received/)[^/\s?#\"'<>]+"), "/k/" + MASK),
    # Authorization: Basic base64(id:secret) / Bearer <JWT>, with or without the header name.
    (re.compile(r"\b(Basic|Bearer)(\s+|%20|\+)[A-Za-z0-9._~+/=%-]{6,}", re.I), r"\1 " + MASK),
    # Fernet tokens (stored ciphertext): version byte 0x80 gives the gAAAAA prefix.
    (re.compile(r"gAAAAA[A-Za-z0-9_=-]{20,}"), MASK),
    # key=value, "key": "value", key: value, key => value where the key names a secret.
    (
        re.compile(rf"""(?P<key>\b{_SENSITIVE_NAME}['"]?\s*(?:=>|=|:)\s*['"]?){_VALUE}""", re.I),
        r"\g<key>" + MASK,
    ),
    # "secret <value>": the name, a space, then anything but a plain word.
    (re.compile(rf"(?P<key>\b{_SENSITIVE_NAME}[ \t]+)(?P<value>{_VALUE})", re.I), _mask_value_after_space),
    # A Client ID (region#id): keep the region, which is not secret, and the
    # last four characters, the same hint the admin shows.
    (re.compile(r"\b([A-Za-z0-9_-]{2,40})#[A-Za-z0-9_-]{4,}([A-Za-z0-9_-]{4})\b"), r"\1#…\2"),
]

# A run of token characters long enough to be a secret and mixing upper case,
# lower case and digits, as generated secrets and tokens do. Plain words,
# lowercase hex ids (UUIDs, task ids) and paths do not qualify.
_TOKEN_RUN = re.compile(r"[A-Za-z0-9_+=~-]{20,}")


def _looks_random(run: str) -> bool:
    return any(c.isdigit() for c in run) and any(c.isupper() for c in run) and any(c.islower() for c in run)


def mask_secrets(text: str) -> str:
    """`text` with everything that looks like a credential replaced by [masked] (URLs: see mask_urls)."""
    if not text:
        return text
    text = mask_urls(text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return _TOKEN_RUN.sub(lambda m: MASK if _looks_random(m.group(0)) else m.group(0), text)


class SecretMaskingFilter(logging.Filter):
    """Masks secrets in a record before any handler writes or sends it. Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not lose the record
            message = f"{record.msg} {record.args!r}"
        record.msg = mask_secrets(message)
        record.args = None  # merged above, so no argument is formatted unmasked later
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


class MaskingAdminEmailHandler(AdminEmailHandler):
    """Django's error mail, with secrets masked in the subject and both bodies."""

    def send_mail(self, subject, message, *args, **kwargs):
        if kwargs.get("html_message"):
            kwargs["html_message"] = mask_secrets(kwargs["html_message"])
        super().send_mail(mask_secrets(subject), mask_secrets(message), *args, **kwargs)


class SecretSafeExceptionReporterFilter(SafeExceptionReporterFilter):
    """Hides key, password and token fields in every error report, decorated view or not.

    Django already hides settings named like KEY, SECRET or PASS; a URL
    carries its password under another name (CELERY_BROKER_URL, a cache's
    LOCATION, DATABASE_URL or EMAIL_URL in request.META under runserver), so
    the password of every URL in a setting or META value is hidden too.
    """

    def cleanse_setting(self, key, value):
        cleansed = super().cleanse_setting(key, value)  # recurses into dicts, lists and tuples through here
        # Exactly str: a lazy object (django-csp's CSP_NONCE) passes isinstance but is no string to re.
        if type(cleansed) is str:
            return _URL_PASSWORD.sub(r"\g<start>" + self.cleansed_substitute + "@", cleansed)
        return cleansed

    def get_post_parameters(self, request):
        params = super().get_post_parameters(request)
        if not params:
            return params
        cleansed = params.copy()
        for name in cleansed:
            if SENSITIVE_NAMES.search(name):
                cleansed[name] = self.cleansed_substitute
        return cleansed

    def get_traceback_frame_variables(self, request, tb_frame):
        return [
            (name, self.cleansed_substitute if SENSITIVE_NAMES.search(name) else value)
            for name, value in super().get_traceback_frame_variables(request, tb_frame)
        ]
