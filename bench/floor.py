"""The floors that only exist for the bench: trivial views and Django's stock admin.

- `floor_submit`: the fair floor of a submission (issue 29): the work no
  submission can skip. It reads the same form, makes the same two calls to
  the CD2 gateway with requests (log in, list the tables), encrypts the
  Secret once with Fernet and INSERTs one row; same gunicorn, middleware and
  CSRF check as the submission page.
- `floor_plain`: the project's plain unauthenticated view (the middleware
  stack, no DRF, no token): the floor under the trivial authenticated API view,
  so the cost of authentication shows.
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

import base64

import requests
from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_POST
from rest_framework import generics, serializers
from rest_framework.response import Response

from api.models import Scope
from api.services import account_institutions
from api.views import ApiView, KeyPagination
from credentials.cd2 import LOGIN_PATH, TABLES_PATH
from credentials.fields import encrypt_str
from credentials.models import AuditEvent
from institutions.models import Contact, Institution


@require_POST
def floor_submit(request: HttpRequest, token: str) -> HttpResponse:
    """The same form, two gateway calls, one encryption, one INSERT, a redirect: what a submission cannot skip."""
    client_id, secret = request.POST["client_id"], request.POST["secret"]
    base = settings.CD2_API_URL.rstrip("/")
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    timeout = (settings.CD2_CONNECT_TIMEOUT, settings.CD2_READ_TIMEOUT)
    with requests.Session() as session:
        login = session.post(
            base + LOGIN_PATH,
            data={"grant_type": "client_credentials"},
            headers={"Authorization": f"Basic {basic}"},
            timeout=timeout,
        )
        login.raise_for_status()
        tables = session.get(
            base + TABLES_PATH, headers={"Authorization": f"Bearer {login.json()['access_token']}"}, timeout=timeout
        )
        tables.raise_for_status()
    AuditEvent.objects.create(
        kind=AuditEvent.Kind.SUBMISSION,
        actor_label=request.POST.get("submitted_by_email", "")[:254],
        # The bench's throwaway database: the ciphertext stands for the stored key.
        detail={"ciphertext": encrypt_str(secret)},
    )
    return HttpResponse(status=303, headers={"Location": "/k/received/"})


def floor_plain(request: HttpRequest, slug: str) -> HttpResponse:
    """A constant through the project's middleware: no DRF, no token, no query."""
    return HttpResponse(f'{{"slug": "{slug}"}}', content_type="application/json")


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
