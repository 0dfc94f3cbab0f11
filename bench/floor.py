"""The floors that only exist for the bench: trivial views and Django's stock admin.

- `floor_write`: a trivial Django view that writes one row, served by the
  same gunicorn, middleware and CSRF check as the submission page.
- `floor_site`: a separate AdminSite with stock ModelAdmins on Institution
  (the floor of the staff institution list: the same rows, Django's own
  changelist) and Contact (one per institution; the floor of earlier runs).
- `FloorApiView`: a trivial authenticated API view (the same token
  authentication, scope check, rate limit and renderer as a key read) that
  answers a constant: the floor of a key read.
- `FloorKeyListView`: DRF's stock ListAPIView over the same institutions with
  a ModelSerializer and the same cursor pagination: the floor of the key list.
"""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_POST
from rest_framework import generics, serializers
from rest_framework.response import Response

from api.models import Scope
from api.services import account_institutions
from api.views import ApiView, KeyPagination
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


class FloorApiView(ApiView):
    required_scope = Scope.KEYS_READ

    def get(self, request, slug: str):
        return Response({"slug": slug})


class FloorInstitutionSerializer(serializers.ModelSerializer):
    class Meta:
        model = Institution
        fields = ("slug", "name", "canvas_domain", "status", "updated_at")


class FloorKeyListView(ApiView, generics.ListAPIView):
    required_scope = Scope.KEYS_LIST
    serializer_class = FloorInstitutionSerializer
    pagination_class = KeyPagination

    def get_queryset(self):
        return account_institutions(account=self.request.user)
