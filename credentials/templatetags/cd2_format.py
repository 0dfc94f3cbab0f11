"""Template filters for dates and names, written one way everywhere (credentials/formatting.py).

A builtin library (settings.TEMPLATES), so every template has them:
{{ key.expires_on|day }}, {{ key.expires_on|weekday }}, {{ event.at|moment }} (the current zone: the
staff member's), {{ link.expires_at|moment:institution.timezone }} (that zone, named),
{{ month|month }}, {{ institution.name|possessive }}, {{ LANGUAGE_CODE|html_lang }} ("fr-CA").
"""

from __future__ import annotations

from django import template

from credentials import formatting

register = template.Library()


@register.filter
def day(value, tz=None) -> str:
    return formatting.format_day(value, tz or None)


@register.filter
def weekday(value, tz=None) -> str:
    return formatting.format_weekday(value, tz or None)


@register.filter
def moment(value, tz=None) -> str:
    # A zone given by name is a reader's elsewhere (a customer's): say which.
    return formatting.format_moment(value, tz or None, with_zone=bool(tz))


@register.filter
def month(value) -> str:
    return formatting.format_month(value) if value else ""


@register.filter
def send_error(value) -> str:
    """A notice's recorded send error in words (the raw text stays on the notice's page)."""
    return formatting.send_error_words(str(value or ""))


@register.filter
def possessive(value) -> str:
    return formatting.possessive(str(value))


@register.filter
def html_lang(value) -> str:
    return formatting.html_lang(str(value)) if value else "en"
