"""Template filters for dates and names, written one way everywhere (credentials/formatting.py).

{% load cd2_format %} then {{ key.expires_on|day }}, {{ link.expires_at|moment:institution.timezone }},
{{ institution.name|possessive }}.
"""

from __future__ import annotations

from django import template

from credentials import formatting

register = template.Library()


@register.filter
def day(value, tz=None) -> str:
    return formatting.format_day(value, tz or None)


@register.filter
def moment(value, tz=None) -> str:
    return formatting.format_moment(value, tz or None)


@register.filter
def month(value) -> str:
    return formatting.format_month(value) if value else ""


@register.filter
def possessive(value) -> str:
    return formatting.possessive(str(value))
