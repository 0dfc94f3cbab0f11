"""The floors that only exist for the bench: a trivial view and Django's stock admin.

- `floor_write`: a trivial Django view that writes one row, served by the
  same gunicorn, middleware and CSRF check as the submission page.
- `floor_site`: a separate AdminSite with stock ModelAdmins on Institution
  (the floor of the staff institution list: the same rows, Django's own
  changelist) and Contact (one per institution; the floor of earlier runs).
"""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_POST

from credentials.models import AuditEvent
from institutions.models import Contact, Institution


@require_POST
def floor_write(request: HttpRequest, token: str) -> HttpResponse:
    """Reads the same form, writes one row, answers a redirect: the least a submission can do."""
    AuditEvent.objects.create(
        kind=AuditEvent.Kind.SUBMISSION, actor_label=request.POST.get("submitted_by_email", "")[:254]
    )
    return HttpResponse(status=303, headers={"Location": "/k/received/"})


floor_site = admin.AdminSite(name="bench_floor_admin")
floor_site.register(Institution)
floor_site.register(Contact)
