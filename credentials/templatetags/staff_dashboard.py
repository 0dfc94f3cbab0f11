"""The dashboard on the admin index, as an inclusion tag.

A tag keeps the stock AdminSite (no custom site to wire into settings) and
lets the index template show the dashboard only to staff who may view
institutions.
"""

from __future__ import annotations

from django import template

from credentials.dashboard import dashboard_context

register = template.Library()


@register.inclusion_tag("admin/credentials/dashboard.html", takes_context=True)
def staff_dashboard(context) -> dict:
    request = context["request"]
    if not request.user.has_perm("institutions.view_institution"):
        return {"show": False}
    return {"show": True, "request": request, **dashboard_context()}
